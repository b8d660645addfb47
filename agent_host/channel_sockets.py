"""The host ends of the guests' virtio-serial channels: the unix socket QEMU
listens on for each VM's ``org.hypertier.0`` port (libvirt
``<channel type='unix'><source mode='bind'>``), one non-blocking client per VM.

https://libvirt.org/formatdomain.html#channel; the byte budget, validation and
sessions over these bytes are :mod:`agent_host.channel`'s.
"""

from __future__ import annotations

import logging
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable

from agent_host.vmspec import CHANNEL_NAME
from hypertier_common.errors import BackendError

__all__ = ["ChannelSockets", "channel_path"]

log = logging.getLogger(__name__)


def channel_path(xml: str) -> str | None:
    """The host-side socket path of the HyperTier virtio-serial channel, or None."""
    root = ET.fromstring(xml)
    for chan in root.iterfind("devices/channel"):
        target = chan.find("target")
        source = chan.find("source")
        if (
            chan.get("type") == "unix"
            and target is not None
            and target.get("name") == CHANNEL_NAME
            and source is not None
        ):
            return source.get("path")
    return None


class ChannelSockets:
    """One connected socket per VM, opened on first use and reopened after QEMU
    closes it. ``path_of(vm)`` gives a VM's socket path (None: it has none);
    one :meth:`recv` reads at most ``max_read_bytes``."""

    def __init__(
        self, path_of: Callable[[str], str | None], max_read_bytes: int
    ) -> None:
        self._path_of = path_of
        self._max_read = max_read_bytes
        self._socks: dict[str, socket.socket] = {}
        self._opens: dict[str, int] = {}

    def send(self, vm: str, line: bytes) -> None:
        """Send ``line`` whole, or raise BackendError (the line is dropped)."""
        sock = self._socket(vm)
        try:
            sent = sock.send(line)
        except BlockingIOError as err:
            raise BackendError(f"channel of {vm} is full; message dropped") from err
        except OSError as err:
            self._close(vm)
            raise BackendError(f"channel of {vm}: {err}") from err
        if sent != len(line):
            raise BackendError(f"channel of {vm} took {sent} of {len(line)} bytes")

    def connection(self, vm: str) -> int:
        """How many times ``vm``'s socket was connected (0: never)."""
        return self._opens.get(vm, 0)

    def recv(self, vm: str) -> bytes:
        """What ``vm``'s socket holds now (empty if it cannot be reached)."""
        try:
            sock = self._socket(vm)
        except BackendError as err:
            log.debug("%s", err)
            return b""
        chunks: list[bytes] = []
        left = self._max_read
        while left > 0:
            try:
                data = sock.recv(min(left, 65536))
            except BlockingIOError:
                break
            except OSError as err:
                log.debug("channel of %s: %s", vm, err)
                self._close(vm)
                break
            if not data:  # QEMU closed the chardev: reconnect next time
                self._close(vm)
                break
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)

    def close(self) -> None:
        for vm in list(self._socks):
            self._close(vm)

    def _socket(self, vm: str) -> socket.socket:
        sock = self._socks.get(vm)
        if sock is not None:
            return sock
        path = self._path_of(vm)
        if path is None:
            raise BackendError(f"{vm} has no {CHANNEL_NAME} unix channel")
        # Non-blocking from the start: a blocking connect(2) to a QEMU that does
        # not accept (stopped, hung, backlog full) would stall the whole loop.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(path)
        except BlockingIOError as err:
            sock.close()
            raise BackendError(
                f"channel of {vm} at {path}: QEMU is not accepting connections "
                "(backlog full); retrying next tick"
            ) from err
        except OSError as err:
            sock.close()
            raise BackendError(f"channel of {vm} at {path}: {err}") from err
        self._socks[vm] = sock
        self._opens[vm] = self._opens.get(vm, 0) + 1
        return sock

    def _close(self, vm: str) -> None:
        sock = self._socks.pop(vm, None)
        if sock is not None:
            sock.close()
