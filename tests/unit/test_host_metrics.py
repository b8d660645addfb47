"""agent_host.metrics.MetricsServer: scrapes over IPv4 and IPv6 loopback, and a
bounded cost per connection (one thread in all, a deadline and a cap).

Every test listens and connects on loopback only (127.0.0.1 or ::1).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from agent_host.errors import HostError
from agent_host.metrics import MetricsServer
from hypertier_common.errors import BackendError


def _ipv6_loopback_missing() -> str:
    """Why [::1] cannot be bound here, or "" if it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as err:
        return f"no IPv6 loopback on this machine (bind [::1]: {err})"
    return ""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return body


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1:0", lambda: "up 1\n")
    srv.start()
    yield srv
    srv.close()


def _idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte."""
    return [
        socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)
    ]


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (waits up to its timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    return False


def test_scrape_returns_the_source_text(server: MetricsServer) -> None:
    assert _get(f"http://127.0.0.1:{server.port}/metrics") == b"up 1\n"


def test_the_index_page_links_the_metrics(server: MetricsServer) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert b'<a href="/metrics">' in r.read()


def test_other_paths_are_not_found(server: MetricsServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(f"http://127.0.0.1:{server.port}/other")
    assert info.value.code == 404


def test_serves_on_the_ipv6_loopback() -> None:
    if reason := _ipv6_loopback_missing():
        pytest.skip(reason)
    srv = MetricsServer("[::1]:0", lambda: "up 1\n")
    srv.start()
    try:
        assert _get(f"http://[::1]:{srv.port}/metrics") == b"up 1\n"
    finally:
        srv.close()


def test_a_busy_port_is_a_backend_error(server: MetricsServer) -> None:
    with pytest.raises(BackendError, match=r"metrics\.listen 127\.0\.0\.1:\d+"):
        MetricsServer(f"127.0.0.1:{server.port}", lambda: "")


@pytest.mark.slow
def test_idle_connections_hold_no_thread_and_close_after_the_timeout() -> None:
    timeout_s = 3.0
    srv = MetricsServer("127.0.0.1:0", lambda: "up 1\n", request_timeout_s=timeout_s)
    srv.start()
    threads = threading.active_count()
    start = time.monotonic()
    idle = _idle(srv.port, 200)
    try:
        # A scrape is answered while all 200 are open, with no thread for any.
        assert _get(f"http://127.0.0.1:{srv.port}/metrics") == b"up 1\n"
        # All 200 held; the scrape's own may not be dropped yet: the server
        # closes it just after the send the client has already read.
        assert srv.open_connections in (200, 201)
        assert threading.active_count() <= threads  # none per connection
        assert all(_closed_by_server(s) for s in idle)
        assert timeout_s <= time.monotonic() - start < timeout_s + 5.0
        assert srv.open_connections == 0
    finally:
        for s in idle:
            s.close()
        srv.close()


def test_connections_over_the_cap_close_the_oldest_and_scrapes_go_on() -> None:
    srv = MetricsServer(
        "127.0.0.1:0", lambda: "up 1\n", request_timeout_s=60.0, max_connections=50
    )
    srv.start()
    idle = _idle(srv.port, 200)
    try:
        assert _get(f"http://127.0.0.1:{srv.port}/metrics") == b"up 1\n"
        assert srv.open_connections <= 50
        # The scrape's own connection pushed out one more of the idle ones.
        assert all(_closed_by_server(s) for s in idle[:151])
        assert all(_still_open(s) for s in idle[151:])
    finally:
        for s in idle:
            s.close()
        srv.close()


def test_a_request_over_the_size_cap_is_dropped_at_once() -> None:
    srv = MetricsServer("127.0.0.1:0", lambda: "up 1\n", request_timeout_s=60.0)
    srv.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000)
            reply = b""
            try:  # up to EOF; a TimeoutError (still open after 10 s) fails the test
                while chunk := s.recv(4096):
                    reply += chunk
            except ConnectionResetError:
                pass  # closed with the rest of the request unread
            assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
    finally:
        srv.close()


def test_a_source_error_is_a_server_error_and_serving_goes_on() -> None:
    calls = iter([HostError("libvirt went away"), "up 1\n"])

    def source() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    srv = MetricsServer("127.0.0.1:0", source)
    srv.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(f"http://127.0.0.1:{srv.port}/metrics")
        assert info.value.code == 503
        assert _get(f"http://127.0.0.1:{srv.port}/metrics") == b"up 1\n"
    finally:
        srv.close()
