"""The control socket both agents serve: a Unix stream socket, one JSON line each way.

Request ``{"method": "status", "params": {}}``; reply ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": {"kind": "NoSuchDomain", "message": "...",
"attrs": {"vm": "web1"}}}`` (docs/wire-protocol.md, "Control socket"). The
controller's methods named in ``METHODS`` are the API; this module is only the
transport: it checks the method and the parameter names against the method's
signature, calls it, and sends back its result or the error it raised. The
socket is created with mode 0660 (unix(7)).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from hypertier_common.errors import (
    AccessDenied,
    AgentError,
    BackendError,
    ConfigError,
    InternalError,
    NotRunning,
    error_from_wire,
    error_to_wire,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "BaseController",
    "ControlClient",
    "ControlServer",
    "Controller",
    "listens",
]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 65536
_MAX_REPLY_BYTES = 16 << 20


class Controller(Protocol):
    """What :class:`ControlServer` serves: ``METHODS`` names the public API."""

    @property
    def METHODS(self) -> Sequence[str]: ...


class Daemon(Protocol):
    """What :class:`BaseController` needs of a daemon."""

    def status(self) -> Mapping[str, Any]: ...

    def stop(self) -> None: ...


class BaseController:
    """``status``, ``reload`` and ``stop``: the control API every agent has.

    ``reload_config`` (given by the agent's ``cmd_run``, which knows the file)
    re-reads the configuration and swaps it in, or raises and keeps the old one.
    An agent's controller adds its own methods and names them in ``METHODS``.
    """

    METHODS: Sequence[str] = ("status", "reload", "stop")

    def __init__(self, daemon: Daemon, reload_config: Callable[[], None]) -> None:
        self._daemon = daemon
        self._reload = reload_config

    def status(self) -> Mapping[str, Any]:
        """The daemon's state, as ``status --json`` prints it."""
        return self._daemon.status()

    def reload(self) -> Mapping[str, Any]:
        """Re-read and apply the configuration. Raises ConfigError."""
        self._reload()
        return {"reloaded": True}

    def stop(self) -> Mapping[str, Any]:
        """End the daemon's loop after its current tick."""
        self._daemon.stop()
        return {"stopping": True}


def _call(controller: Controller, raw: bytes) -> object:
    """Decode one request and run it. Raises AgentError for a bad request."""
    try:
        req = json.loads(raw)
    except ValueError as err:
        raise ConfigError(f"request is not JSON: {err}") from err
    methods = list(controller.METHODS)
    if not isinstance(req, dict) or req.get("method") not in methods:
        raise ConfigError(f"unknown method; choose from {methods}")
    params = req.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError("params must be an object")
    method = getattr(controller, req["method"])
    try:
        inspect.signature(method).bind(**params)
    except TypeError as err:  # from bind() alone: the call has not happened
        raise ConfigError(f"{req['method']}: {err}") from err
    return method(**params)


def reply_to(controller: Controller, raw: bytes) -> dict[str, Any]:
    """The reply to the request line ``raw`` (never raises)."""
    try:
        return {"ok": True, "result": _call(controller, raw)}
    except AgentError as err:
        return {"ok": False, "error": error_to_wire(err)}
    except Exception as err:  # a bug: logged here, reported to the caller
        log.exception("control request %.200r failed", raw)
        bug = InternalError(f"internal error: {err!r} (see the daemon's log)")
        return {"ok": False, "error": error_to_wire(bug)}


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        raw = self.rfile.readline(MAX_REQUEST_BYTES)
        reply = reply_to(self.server.controller, raw)
        try:
            data = json.dumps(reply).encode()
        except (TypeError, ValueError) as err:
            log.exception("control reply is not JSON")
            bug = InternalError(f"internal error: reply is not JSON: {err}")
            data = json.dumps({"ok": False, "error": error_to_wire(bug)}).encode()
        self.wfile.write(data + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    controller: Controller


def listens(path: Path, timeout_s: float = 1.0) -> bool:
    """True when something accepts connections on the unix socket ``path``.

    A socket file left behind by a daemon that died refuses connections.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class ControlServer:
    """Serve ``controller`` on the Unix socket ``path`` (mode 0660) from a thread.

    A socket file left by a daemon that died is replaced; one that a running
    daemon answers on is not.

    Raises:
        BackendError: the socket cannot be created, or another daemon serves it.
    """

    def __init__(self, controller: Controller, path: str | Path) -> None:
        self._path = Path(path)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if self._path.is_socket():
                if listens(self._path):
                    raise BackendError(
                        f"control socket {self._path}: another daemon is running"
                    )
                self._path.unlink()
            old_umask = os.umask(0o117)  # no window with a wider mode
            try:
                self._server = _Server(str(self._path), _Handler)
            finally:
                os.umask(old_umask)
            os.chmod(self._path, 0o660)
        except OSError as err:
            raise BackendError(f"control socket {self._path}: {err}") from err
        self._server.controller = controller
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control", daemon=True
        )

    @property
    def path(self) -> Path:
        return self._path

    def start(self) -> None:
        self._thread.start()
        log.info("control socket listening on %s", self._path)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._path.unlink(missing_ok=True)


class ControlClient:
    """Call a running daemon's controller over its socket.

    ``kinds`` maps the error kinds of the daemon's agent to its classes
    (``hypertier_common.errors.kinds``), so :meth:`call` raises what the
    daemon raised.
    """

    def __init__(
        self,
        path: str | Path,
        kinds: Mapping[str, type[AgentError]],
        timeout_s: float = 10.0,
    ) -> None:
        self._path = str(path)
        self._kinds = kinds
        self._timeout_s = timeout_s

    def call(self, method: str, **params: object) -> Any:
        """Invoke ``method`` with ``params``; returns its result.

        Raises:
            NotRunning: nothing listens on the socket.
            AccessDenied: the socket exists but we may not connect to it.
            BackendError: no reply, or not a valid one.
            AgentError: whatever the method raised in the daemon.
        """
        req = json.dumps({"method": method, "params": params}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(self._path)
                sock.sendall(req)
                data = sock.makefile("rb").readline(_MAX_REPLY_BYTES)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise NotRunning(self._path, err.strerror or type(err).__name__) from err
        except PermissionError as err:
            raise AccessDenied(self._path, "join the socket's group") from err
        except OSError as err:
            raise BackendError(f"daemon at {self._path}: {err}") from err
        try:
            reply = json.loads(data)
        except ValueError as err:
            raise BackendError(f"daemon sent an invalid reply: {data[:80]!r}") from err
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise BackendError(f"daemon sent an invalid reply: {data[:80]!r}")
        if reply["ok"]:
            return reply.get("result")
        raise error_from_wire(reply.get("error"), self._kinds)
