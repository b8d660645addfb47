"""The control API (:class:`Controller`) and its JSON-lines transport on a Unix
socket (mode 0660), used by ``hypertier-guest status|reload|stop``.

Request: one line ``{"method": "status"}``; reply: one line ``{"result": ...}``
or ``{"error": "..."}``. See unix(7).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

from agent_guest.daemon import Daemon
from agent_guest.errors import BackendError, GuestError

__all__ = ["METHODS", "ControlServer", "Controller", "call"]

log = logging.getLogger(__name__)
METHODS = ("status", "reload", "stop")
_MAX_REQUEST = 4096


class Controller:
    """The daemon's control API; each public method is one remote method."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def status(self) -> Mapping[str, object]:
        """Counters of the running daemon."""
        return self._daemon.status()

    def reload(self) -> Mapping[str, object]:
        """Re-read the config file at the next tick (keeps the old one if invalid)."""
        self._daemon.request_reload()
        return {"reload": "requested"}

    def stop(self) -> Mapping[str, object]:
        """Finish the current tick and shut down."""
        self._daemon.stop()
        return {"stop": "requested"}

    def dispatch(self, method: str) -> Mapping[str, object]:
        if method not in METHODS:
            raise BackendError(f"unknown method {method!r}; choose from {METHODS}")
        result: Mapping[str, object] = getattr(self, method)()
        return result


class ControlServer:
    """Serves a Controller on a Unix socket from one background thread."""

    def __init__(self, path: Path | str, controller: Controller) -> None:
        self._path = Path(path)
        self._controller = controller
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            self._sock.bind(str(self._path))
            # Before listen(): nobody can connect until the mode is right.
            os.chmod(self._path, 0o660)
            self._sock.listen(8)
        except OSError as err:
            self._sock.close()
            raise BackendError(f"control socket {self._path}: {err}") from err
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="hypertier-control", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("control socket listening on %s", self._path)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            data = b""
            while b"\n" not in data and len(data) < _MAX_REQUEST:
                chunk = conn.recv(_MAX_REQUEST)
                if not chunk:
                    break
                data += chunk
            try:
                req = json.loads(data.split(b"\n", 1)[0])
                method = req["method"] if isinstance(req, dict) else None
                if not isinstance(method, str):
                    raise BackendError('request must be {"method": NAME}')
                reply: dict[str, object] = {"result": self._controller.dispatch(method)}
            except (ValueError, KeyError) as err:
                reply = {"error": f"bad request: {err}"}
            except GuestError as err:
                reply = {"error": str(err)}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError as err:
            log.debug("control client went away: %s", err)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def call(path: Path | str, method: str, timeout_s: float = 5.0) -> object:
    """Call ``method`` on the daemon at ``path``. Raises BackendError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"method": method}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as err:
        raise BackendError(f"cannot reach the daemon at {path}: {err}") from err
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError as err:
        raise BackendError(f"bad reply from the daemon: {err}") from err
    if not isinstance(reply, dict):
        raise BackendError("bad reply from the daemon: not an object")
    if "error" in reply:
        raise BackendError(f"daemon: {reply['error']}")
    return reply.get("result")
