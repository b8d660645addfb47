"""agent_host.metrics.MetricsServer: scrapes over IPv4 and IPv6 loopback.

Every test listens and connects on loopback only (127.0.0.1 or ::1).
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from agent_host.errors import BackendError
from agent_host.metrics import MetricsServer


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


def test_scrape_returns_the_source_text(server: MetricsServer) -> None:
    assert _get(f"http://127.0.0.1:{server.port}/metrics") == b"up 1\n"


def test_other_paths_are_not_found(server: MetricsServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(f"http://127.0.0.1:{server.port}/")
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
