"""The guest end of the virtio-serial port to the host agent
(``/dev/virtio-ports/org.hypertier.0``), non-blocking, whole lines only.

Kernel: drivers/char/virtio_console.c (one character device per named port).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypertier_common.errors import AccessDenied, BackendError, Unsupported

__all__ = ["HostChannel"]

_MAX_UNSENT = 1 << 16  # bytes queued for a host channel nobody reads


class HostChannel:
    """The port at ``path``, opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._unsent = bytearray()

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
            except FileNotFoundError as err:
                raise Unsupported("host channel", f"{self.path} missing") from err
            except PermissionError as err:
                raise AccessDenied(str(self.path), "needs group hypertier") from err
        return self._fd

    @property
    def unsent_bytes(self) -> int:
        """Bytes of lines queued but not yet taken by the port."""
        return len(self._unsent)

    def send(self, line: bytes) -> None:
        """Queue ``line`` and write what the port takes now.

        A virtio-serial port whose host end is not read fills up; the rest of a
        partly written line goes out with the next call, so the host never sees
        a torn line. Raises BackendError (line dropped) once ``_MAX_UNSENT``
        bytes wait, or on a write error.
        """
        fd = self._open()
        if len(self._unsent) + len(line) > _MAX_UNSENT:
            raise BackendError(
                f"host channel full ({len(self._unsent)} bytes unsent); "
                "host agent not reading; message dropped"
            )
        self._unsent += line
        try:
            while self._unsent:
                del self._unsent[: os.write(fd, self._unsent)]
        except BlockingIOError:
            return
        except OSError as err:
            raise BackendError(f"host channel write: {err}") from err

    def recv(self) -> bytes:
        """All bytes the port holds now (possibly none)."""
        fd = self._open()
        chunks = []
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append(data)
        except BlockingIOError:
            pass
        except OSError as err:
            raise BackendError(f"host channel read: {err}") from err
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
