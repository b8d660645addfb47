"""The control API (:class:`Controller`) and its Unix-socket JSON transport.

One JSON object per line each way: ``{"method": "status", "params": {}}`` is
answered by ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...",
"kind": "NoSuchDomain"}``. The socket is created with mode 0660.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_host.backend import Tier
from agent_host.daemon import Daemon
from agent_host.errors import (
    AccessDenied,
    BackendError,
    ConfigError,
    HostError,
    NoSuchDomain,
    Unsupported,
)

__all__ = ["ControlClient", "ControlServer", "Controller"]

log = logging.getLogger(__name__)

_MAX_REQUEST_BYTES = 65536
_METHODS = ("status", "vm_set", "reload", "stop")


class Controller:
    """The daemon's control API; each public method is one remote call.

    ``reload`` re-reads the configuration through ``reload_config`` (given by
    the CLI, which knows the file); ``stop`` ends :meth:`Daemon.run`.
    """

    def __init__(
        self, daemon: Daemon, reload_config: Callable[[], None] | None = None
    ) -> None:
        self._daemon = daemon
        self._reload = reload_config

    def status(self) -> dict[str, Any]:
        return self._daemon.status()

    def vm_set(
        self,
        vm: str,
        qos_class: str | None = None,
        fast_reservation_bytes: float | None = None,
        slow_reservation_bytes: float | None = None,
        fast_limit_bytes: float | None = None,
        slow_limit_bytes: float | None = None,
    ) -> dict[str, Any]:
        """Change a VM's class, reservations or limits (see Daemon.vm_set).

        Sizes arrive as JSON numbers, which do not tell 1024 from 1024.0: an
        integral float is taken as that int, anything else is refused.

        Raises:
            ConfigError: a size is not a whole number of bytes, or as
                :meth:`Daemon.vm_set`.
            NoSuchDomain: as :meth:`Daemon.vm_set`.
        """
        res = {
            t: _whole_bytes(name, v)
            for t, name, v in (
                (Tier.FAST, "fast_reservation_bytes", fast_reservation_bytes),
                (Tier.SLOW, "slow_reservation_bytes", slow_reservation_bytes),
            )
            if v is not None
        }
        lim = {
            t: _whole_bytes(name, v)
            for t, name, v in (
                (Tier.FAST, "fast_limit_bytes", fast_limit_bytes),
                (Tier.SLOW, "slow_limit_bytes", slow_limit_bytes),
            )
            if v is not None
        }
        meta = self._daemon.vm_set(vm, qos_class, res, lim)
        return {
            "vm": vm,
            "class": meta.qos_class,
            "tiers": {
                t.tier.value: {
                    "reservation_bytes": t.reservation_bytes,
                    "limit_bytes": t.limit_bytes,
                }
                for t in meta.tiers
            },
        }

    def reload(self) -> dict[str, Any]:
        if self._reload is None:
            raise BackendError("this daemon has no configuration file to reload")
        self._reload()
        return {"reloaded": True}

    def stop(self) -> dict[str, Any]:
        self._daemon.stop()
        return {"stopping": True}


def _whole_bytes(name: str, value: object) -> int:
    """``value`` as an int number of bytes; integral floats (1024.0) included."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{name} must be a whole number of bytes, got {value!r}")


_ERRORS: dict[str, type[HostError]] = {
    "ConfigError": ConfigError,
    "NoSuchDomain": NoSuchDomain,
    "BackendError": BackendError,
}


def _dispatch(controller: Controller, raw: bytes) -> dict[str, Any]:
    try:
        req = json.loads(raw)
    except ValueError:
        return {"ok": False, "kind": "ConfigError", "error": "request is not JSON"}
    if not isinstance(req, dict) or req.get("method") not in _METHODS:
        return {
            "ok": False,
            "kind": "ConfigError",
            "error": f"unknown method; choose from {list(_METHODS)}",
        }
    params = req.get("params") or {}
    if not isinstance(params, dict):
        return {"ok": False, "kind": "ConfigError", "error": "params is not an object"}
    try:
        result = getattr(controller, req["method"])(**params)
    except TypeError as err:
        return {"ok": False, "kind": "ConfigError", "error": f"bad params: {err}"}
    except NoSuchDomain as err:
        return {"ok": False, "kind": "NoSuchDomain", "error": str(err), "vm": err.vm}
    except HostError as err:
        kind = type(err).__name__
        return {
            "ok": False,
            "kind": kind if kind in _ERRORS else "BackendError",
            "error": str(err),
        }
    return {"ok": True, "result": result}


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        raw = self.rfile.readline(_MAX_REQUEST_BYTES)
        reply = _dispatch(self.server.controller, raw)
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    controller: Controller


class ControlServer:
    """Serve ``controller`` on the Unix socket ``path`` (mode 0660) in a thread."""

    def __init__(self, controller: Controller, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.is_socket():
            self._path.unlink()  # left over from a daemon that died
        old_umask = os.umask(0o117)
        try:
            self._server = _Server(str(self._path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(self._path, 0o660)
        self._server.controller = controller
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("control socket listening on %s", self._path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._path.unlink(missing_ok=True)


class ControlClient:
    """Call a running daemon's Controller methods over its socket."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0) -> None:
        self._path = str(path)
        self._timeout_s = timeout_s

    def call(self, method: str, **params: Any) -> Any:
        """Invoke ``method``; returns its result.

        Raises:
            BackendError: no daemon listens on the socket, or it failed.
            AccessDenied: the socket exists but we may not connect.
            ConfigError, NoSuchDomain: as raised by the daemon.
        """
        req = json.dumps({"method": method, "params": params}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(self._path)
                sock.sendall(req)
                data = sock.makefile("rb").readline(16 << 20)
        except PermissionError as err:
            raise AccessDenied(self._path, "join the socket's group") from err
        except OSError as err:
            raise BackendError(f"no daemon at {self._path}: {err}") from err
        try:
            reply = json.loads(data)
        except ValueError as err:
            raise BackendError(f"daemon sent an invalid reply: {data[:80]!r}") from err
        if reply.get("ok"):
            return reply.get("result")
        kind = reply.get("kind", "BackendError")
        if kind == "NoSuchDomain":
            raise NoSuchDomain(str(reply.get("vm", "")))
        if kind == "Unsupported":
            raise Unsupported(method, str(reply.get("error")))
        raise _ERRORS.get(kind, BackendError)(str(reply.get("error")))
