"""Prometheus text exposition (format 0.0.4) of the daemon's status, and its server.

One thread serves ``GET /metrics`` on ``metrics.listen`` (IPv4, ``[IPv6]`` or a
name) with a selector (selectors(3)/epoll(7)), so idle connections cost a socket,
never a thread; each has a deadline and their number a cap. No client library.
See https://prometheus.io/docs/instrumenting/exposition_formats/.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from agent_host.backend import DomainStats
from agent_host.config import split_listen
from agent_host.errors import BackendError, HostError

__all__ = ["MetricsServer", "render"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        value: float | None,
        **labels: str,
    ) -> None:
        if value is None:
            return  # not exposed on this host: omit rather than fake a zero
        if name not in self._declared:
            self._declared.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")
        lbl = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.lines.append(
            f"{name}{{{lbl}}} {float(value)!r}" if lbl else f"{name} {float(value)!r}"
        )


def render(status: Mapping[str, Any], stats: Mapping[str, DomainStats]) -> str:
    """The metrics text for one scrape from ``Daemon.status()`` and stats."""
    w = _Writer()
    w.add("hypertier_host_ticks_total", "counter", "Policy ticks run.", status["ticks"])
    w.add(
        "hypertier_host_tick_failures_total",
        "counter",
        "Ticks that failed as a whole.",
        status["tick_failures"],
    )
    w.add(
        "hypertier_host_tick_seconds",
        "gauge",
        "Duration of the last tick.",
        status["last_tick_ms"] / 1000.0,
    )
    host = status["host"]
    for tier in ("fast", "slow"):
        w.add(
            "hypertier_host_capacity_bytes",
            "gauge",
            "Memory the policy may allot per tier (before slow overcommit).",
            host[f"{tier}_capacity_bytes"],
            tier=tier,
        )
    w.add(
        "hypertier_host_slow_tier_emulated",
        "gauge",
        "1 if no CPU-less host node exists and the slow tier shares fast memory.",
        1.0 if host["slow_tier_emulated"] else 0.0,
    )
    for vm, st in sorted(status["vms"].items()):
        w.add(
            "hypertier_vm_class_weight",
            "gauge",
            "QoS class weight of the VM.",
            st["weight"],
            vm=vm,
            qos_class=st["class"],
        )
        for tier, t in st["tiers"].items():
            for key, help_text in (
                ("requested_bytes", "Allotment requested from the guest."),
                ("current_bytes", "Allotment the guest has plugged."),
                ("target_bytes", "Allotment the policy wants."),
                ("share_bytes", "Class-weighted share of the tier's capacity."),
                ("reservation_bytes", "Guaranteed minimum of the tier."),
                ("limit_bytes", "Maximum of the tier."),
            ):
                w.add(
                    f"hypertier_vm_allotment_{key}",
                    "gauge",
                    help_text,
                    t[key],
                    vm=vm,
                    tier=tier,
                )
        w.add(
            "hypertier_vm_resizes_total",
            "counter",
            "Resizes issued.",
            st["resizes"],
            vm=vm,
        )
        guest = st["guest"]
        w.add(
            "hypertier_vm_guest_hot_bytes",
            "gauge",
            "Guest-reported hot set.",
            guest["hot_bytes"],
            vm=vm,
        )
        w.add(
            "hypertier_vm_guest_pressure",
            "gauge",
            "Guest-reported pressure.",
            guest["pressure"],
            vm=vm,
        )
        w.add(
            "hypertier_vm_guest_invalid_messages_total",
            "counter",
            "Invalid guest messages.",
            guest["invalid"],
            vm=vm,
        )
        for key, help_text in (
            ("lines", "Lines read from the guest channel (blank lines included)."),
            ("blank_lines", "Blank lines read from the guest channel."),
            ("bytes_received", "Bytes read from the guest channel."),
            ("bytes_discarded", "Bytes over channel.max_bytes_per_tick, unread."),
            ("over_budget", "Ticks in which the guest sent more than its budget."),
            ("sessions", "Guest agent sessions (hellos) seen by this daemon."),
        ):
            w.add(
                f"hypertier_vm_guest_{key}_total",
                "counter",
                help_text,
                guest.get(key),
                vm=vm,
            )
        w.add(
            "hypertier_vm_guest_implausible_reports_total",
            "counter",
            "Guest reports claiming more than the host sees plugged (capped).",
            guest["implausible_reports"],
            vm=vm,
        )
        w.add(
            "hypertier_vm_guest_throttled",
            "gauge",
            "1 while the guest's channel is throttled.",
            1.0 if guest["throttled"] else 0.0,
            vm=vm,
        )
    for vm, s in sorted(stats.items()):
        w.add(
            "hypertier_vm_remote_tlb_flush_total",
            "counter",
            "KVM remote TLB flushes (query-stats).",
            s.remote_tlb_flush,
            vm=vm,
        )
        w.add(
            "hypertier_vm_tlb_flush_total",
            "counter",
            "KVM vCPU TLB flushes (query-stats).",
            s.tlb_flush,
            vm=vm,
        )
        w.add(
            "hypertier_vm_exits_total",
            "counter",
            "KVM exits (query-stats).",
            s.exits,
            vm=vm,
        )
        w.add(
            "hypertier_vm_cpu_seconds_total",
            "counter",
            "vCPU time.",
            s.cpu_time_s,
            vm=vm,
        )
        w.add(
            "hypertier_vm_balloon_current_bytes",
            "gauge",
            "Balloon size.",
            s.balloon_current_bytes,
            vm=vm,
        )
    return "\n".join(w.lines) + "\n"


_MAX_REQUEST_BYTES = 8192  # request line and headers; a scrape sends ~200


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytes = b""
    sent: int = 0


def _response(status: HTTPStatus, body: bytes = b"", head: bool = False) -> bytes:
    ctype = CONTENT_TYPE if status is HTTPStatus.OK else "text/plain; charset=utf-8"
    if status is not HTTPStatus.OK:
        body = f"{status.value} {status.phrase}\n".encode()
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status is HTTPStatus.METHOD_NOT_ALLOWED:
        lines.append("Allow: GET, HEAD")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + (b"" if head else body)


class MetricsServer:
    """Serve ``source()`` at ``/metrics`` on ``listen`` ("address:port").

    Each connection must send its request and take the response within
    ``request_timeout_s`` of each, or it is closed; at ``max_connections`` open,
    a new connection closes the oldest one, so a flood of idle connections
    cannot lock out a scraper. ``Connection: close`` after every response.

    Raises:
        ConfigError: ``listen`` is malformed.
        BackendError: the address cannot be resolved or bound.
    """

    def __init__(
        self,
        listen: str,
        source: Callable[[], str],
        *,
        request_timeout_s: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        host, port = split_listen(listen)
        self._source = source
        self._timeout_s = request_timeout_s
        self._max_connections = max_connections
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            self._sock = socket.socket(family, kind, proto)
        except OSError as err:
            raise BackendError(f"metrics.listen {listen}: {err}") from err
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(addr)
            self._sock.listen(socket.SOMAXCONN)
        except OSError as err:
            self._sock.close()
            raise BackendError(f"metrics.listen {listen}: {err}") from err
        self._sock.setblocking(False)
        # Insertion order is deadline order: every deadline is "now + timeout".
        self._conns: dict[socket.socket, _Conn] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._cap_warned = False
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed (read from another thread)."""
        return len(self._conns)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on port %d", self.port)

    def close(self) -> None:
        """Stop serving and close every socket; waits up to 10 s for the thread."""
        self._stop.set()
        self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(10.0)
        else:
            self._close_all()

    # ------------------------------------------------------------------ loop
    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                timeout = None
                if self._conns:
                    first = next(iter(self._conns.values()))
                    timeout = max(0.0, first.deadline - time.monotonic())
                for key, events in self._selector.select(timeout):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        return
                    elif events & selectors.EVENT_READ:
                        self._read(key.data)
                    else:
                        self._write(key.data)
                self._expire()
        finally:
            self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and the like: retry on the next event
                log.warning("metrics: accept failed: %s", err)
                return
            if len(self._conns) >= self._max_connections:
                if not self._cap_warned:
                    log.warning(
                        "metrics: %d connections open; closing the oldest",
                        self._max_connections,
                    )
                    self._cap_warned = True
                self._drop(next(iter(self._conns.values())))
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self._timeout_s)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbuf += data
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > _MAX_REQUEST_BYTES:
                self._reply(conn, _response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE))
            return
        self._reply(conn, self._handle(bytes(conn.inbuf[:end])))

    def _handle(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(HTTPStatus.BAD_REQUEST)
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED)
        if target.split(b"?", 1)[0] != b"/metrics":
            return _response(HTTPStatus.NOT_FOUND)
        try:
            body = self._source().encode()
        except HostError as err:
            log.warning("metrics: cannot render: %s", err)
            return _response(HTTPStatus.SERVICE_UNAVAILABLE)
        return _response(HTTPStatus.OK, body, head=method == b"HEAD")

    def _reply(self, conn: _Conn, response: bytes) -> None:
        conn.outbuf, conn.inbuf = response, bytearray()
        # A fresh deadline for sending: move to the end to keep deadline order.
        del self._conns[conn.sock]
        conn.deadline = time.monotonic() + self._timeout_s
        self._conns[conn.sock] = conn
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(conn.outbuf[conn.sent :])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if conn.sent >= len(conn.outbuf):
            self._drop(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._conns:
            first = next(iter(self._conns.values()))
            if first.deadline > now:
                return
            log.debug("metrics: connection timed out")
            self._drop(first)

    def _drop(self, conn: _Conn) -> None:
        del self._conns[conn.sock]
        self._selector.unregister(conn.sock)
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._selector.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
