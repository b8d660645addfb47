"""The metrics endpoint of both agents: ``metrics.listen``, its server, tick timing.

The exposition comes from prometheus_client (:mod:`hypertier_common.prometheus`,
imported only where metrics are on); :class:`MetricsServer` serves it. It is not
prometheus_client's ``start_http_server``, which runs one thread per connection
with no deadline, so idle connections would pile up threads: one thread serves
every connection with a selector (selectors(3)/epoll(7)), each connection has a
deadline and their number a cap.
"""

from __future__ import annotations

import html
import ipaddress
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np

from hypertier_common.errors import ConfigError
from hypertier_common.tomlconfig import Table, require

__all__ = [
    "CONTENT_TYPE",
    "CpuStopwatch",
    "DurationHistogram",
    "MetricsConfig",
    "MetricsError",
    "MetricsServer",
    "parse_listen",
    "split_listen",
]

# prometheus_client.CONTENT_TYPE_LATEST (text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger(__name__)


class MetricsError(Exception):
    """``metrics.listen`` is malformed or cannot be bound."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``"address:port"`` as (address, port); IPv6 literals go in brackets.

    ``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``"localhost:9464"``; port 0 means
    any free port (for tests).

    Raises:
        MetricsError: not of that form, naming ``metrics.listen``.
    """
    host, sep, port = listen.rpartition(":")
    usage = f"metrics.listen must be 'address:port', got {listen!r}"
    if not sep or not port.isdecimal() or not 0 <= int(port) < 65536:
        raise MetricsError(f"{usage}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as err:
            raise MetricsError(f"{usage}: {host} is not an IPv6 address") from err
        return host[1:-1], int(port)
    if ":" in host or "[" in host or "]" in host:
        raise MetricsError(f"{usage}: write an IPv6 address in brackets, '[::1]:9464'")
    if not host:
        raise MetricsError(f"{usage}: the address is missing (0.0.0.0 for any)")
    return host, int(port)


def split_listen(listen: str) -> tuple[str, int]:
    """:func:`parse_listen` for a configuration file.

    Raises:
        ConfigError: not of that form, naming ``metrics.listen``.
    """
    try:
        return parse_listen(listen)
    except MetricsError as err:
        raise ConfigError(str(err)) from err


@dataclass(frozen=True)
class MetricsConfig(Table, table="metrics"):
    """``[metrics]``: the agent's Prometheus endpoint, ``"address:port"``
    (:func:`parse_listen`); ``listen = ""``, the default, turns it off. The
    packaged units need a change to serve it: see docs/operations.md."""

    listen: str = ""

    def validate(self) -> None:
        require(
            not self.listen or split_listen(self.listen)[1] != 0,
            f"metrics.listen needs a port from 1, got {self.listen!r}",
        )


# Tick durations: 1 ms to 10 s (a tick waits on libvirt or moves pages).
DEFAULT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class DurationHistogram:
    """Counts of observed durations per bucket, as a Prometheus histogram.

    Plain data (no prometheus_client in the loop that observes): the daemon
    calls :meth:`observe` once per tick; a collector reads :meth:`snapshot`.
    """

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = np.asarray(sorted(buckets), dtype=float)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: +Inf
        self.sum_s = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = int(np.searchsorted(self.bounds, seconds, side="left"))
        with self._lock:
            self.counts[i] += 1
            self.sum_s += seconds

    def snapshot(self) -> tuple[list[float], list[int], float]:
        """(upper bounds, cumulative counts with +Inf last, sum of seconds)."""
        with self._lock:
            cumulative = np.cumsum(self.counts)
            total = self.sum_s
        return [*map(float, self.bounds), math.inf], [int(c) for c in cumulative], total


_INDEX = """<!DOCTYPE html>
<html><head><title>{title} metrics</title></head>
<body><h1>{title}</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""

_MAX_REQUEST_BYTES = 8192  # request line and headers; a scrape sends ~200


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytes = b""
    sent: int = 0


def _response(
    status: HTTPStatus,
    body: bytes = b"",
    head: bool = False,
    ctype: str = CONTENT_TYPE,
) -> bytes:
    if status is not HTTPStatus.OK:
        body = f"{status.value} {status.phrase}\n".encode()
        ctype = "text/plain; charset=utf-8"
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
    """Serve ``source()`` at ``/metrics`` and an index page at ``/`` on ``listen``
    ("address:port", :func:`parse_listen`).

    Each connection must send its request and take the response within
    ``request_timeout_s`` of each, or it is closed; at ``max_connections`` open,
    a new connection closes the oldest one, so a flood of idle connections
    cannot lock out a scraper. ``Connection: close`` after every response.

    Raises:
        MetricsError: ``listen`` is malformed, cannot be resolved or bound
            (the message names ``metrics.listen``).
    """

    def __init__(
        self,
        listen: str,
        source: Callable[[], bytes | str],
        *,
        title: str = "HyperTier",
        request_timeout_s: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        host, port = parse_listen(listen)
        self._source = source
        self._index = _INDEX.format(title=html.escape(title)).encode()
        self._timeout_s = request_timeout_s
        self._max_connections = max_connections
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            self._sock = socket.socket(family, kind, proto)
        except OSError as err:
            raise MetricsError(f"metrics.listen {listen}: {err}") from err
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(addr)
            self._sock.listen(socket.SOMAXCONN)
        except OSError as err:
            self._sock.close()
            raise MetricsError(f"metrics.listen {listen}: {err}") from err
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
        path = target.split(b"?", 1)[0]
        if path == b"/":
            return _response(
                HTTPStatus.OK,
                self._index,
                method == b"HEAD",
                "text/html; charset=utf-8",
            )
        if path != b"/metrics":
            return _response(HTTPStatus.NOT_FOUND)
        try:
            out = self._source()
        except Exception as err:  # a failed scrape must not end the server thread
            log.warning("metrics: cannot render: %s", err)
            return _response(HTTPStatus.SERVICE_UNAVAILABLE)
        body = out.encode() if isinstance(out, str) else out
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


class CpuStopwatch:
    """This process's CPU time (all threads) per named step, for debug logs:
    ``lap(name)`` charges the time since the last lap to ``name``."""

    def __init__(self) -> None:
        self._last = time.process_time()
        self.steps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.process_time()
        self.steps[name] = self.steps.get(name, 0.0) + now - self._last
        self._last = now

    def __str__(self) -> str:
        return " ".join(f"{k} {v * 1e3:.0f}" for k, v in self.steps.items())
