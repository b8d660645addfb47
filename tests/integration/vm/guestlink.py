"""Host side of the test-only virtio-serial channel to guestd.py (JSON lines).

libvirt binds the channel's Unix socket (``<source mode='bind'>``); we connect as
the client. Requests carry an ``id``; replies with another id (stale ones from a
timed-out request) are dropped.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

TEST_CHANNEL = "org.hypertier.test.0"


class GuestLinkError(RuntimeError):
    """The guest did not answer in time or the channel broke."""


class GuestLink:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 1

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(self._path))
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, req: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        """Send one request and wait up to ``timeout_s`` for its reply."""
        sock = self._connect()
        req = {**req, "id": self._next_id}
        self._next_id += 1
        sock.sendall((json.dumps(req) + "\n").encode())
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    resp: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                if resp.get("id") == req["id"]:
                    return resp
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestLinkError(
                    f"no reply to {req.get('op')} within {timeout_s} s"
                )
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                self.close()
                raise GuestLinkError("guest channel closed")
            self._buf += chunk

    def wait_ready(self, timeout_s: float) -> float:
        """Ping until guestd answers; returns the guest's uptime in seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestLinkError(f"guestd did not answer within {timeout_s:.0f} s")
            try:
                resp = self.call({"op": "ping"}, timeout_s=min(2.0, left))
                return float(resp["uptime_s"])
            except (GuestLinkError, OSError):
                self.close()
                time.sleep(0.5)

    def sh(self, cmd: str, timeout_s: float = 120.0, check: bool = True) -> str:
        """Run ``cmd`` with /bin/sh in the guest; return stdout."""
        resp = self.call(
            {"op": "sh", "cmd": cmd, "timeout_s": timeout_s}, timeout_s + 10
        )
        if check and resp.get("rc") != 0:
            raise GuestLinkError(
                f"guest command failed rc={resp.get('rc')}: {cmd}\n"
                + str(resp.get("err", ""))
            )
        return str(resp.get("out", ""))

    def spawn(self, cmd: str, log: str) -> int:
        resp = self.call({"op": "spawn", "cmd": cmd, "log": log})
        if "pid" not in resp:
            raise GuestLinkError(f"spawn failed: {resp}")
        return int(resp["pid"])

    def wait(self, pid: int, timeout_s: float) -> int | None:
        resp = self.call(
            {"op": "wait", "pid": pid, "timeout_s": timeout_s}, timeout_s + 10
        )
        rc = resp.get("rc")
        return None if rc is None else int(rc)

    def read_json(self, path: str) -> Any:
        return json.loads(self.sh(f"cat {path}"))
