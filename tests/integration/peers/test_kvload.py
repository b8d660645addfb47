"""ht-kvload, the skewed redis load generator, against a real redis-server on
this host. Needs redis-server (scripts/setup installs it), gcc and libc6-dev.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.peers.hostrun import (
    assert_usage_error,
    build_or_skip,
    json_records,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kvload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_or_skip(tmp_path_factory.mktemp("cache"), "ht-kvload")


class Redis:
    def __init__(self, port: int) -> None:
        self.port = port

    def command(self, *args: str) -> bytes:
        """One RESP request, the raw reply (small replies only)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            parts.append(f"${len(a)}\r\n{a}\r\n".encode())
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"".join(parts))
            return s.recv(65536)


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready to accept connections" in line.lower():
            break
    else:
        pytest.fail(f"redis-server on port {port} exited: rc {proc.wait()}")
    try:
        yield Redis(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _run(binary: Path, *args: str) -> list[dict[str, Any]]:
    return json_records([binary, *args], timeout_s=120)


def test_populates_then_reports_throughput_and_latency(
    kvload: Path, redis: Redis
) -> None:
    start, *samples, end = _run(
        kvload, "--port", str(redis.port), "--keys", "5000", "--value-bytes", "512",
        "--connections", "2", "--duration-s", "1.6", "--interval-s", "0.5",
    )  # fmt: skip
    assert redis.command("DBSIZE") == b":5000\r\n"
    assert start["type"] == "start"
    assert start["populated"] is True
    assert start["server"] == f"127.0.0.1:{redis.port}"
    assert [r["type"] for r in samples] == ["sample"] * len(samples)
    assert len(samples) >= 2
    assert end["type"] == "end"
    for r in [*samples, end]:
        assert r["ops_per_s"] > 0
        assert r["misses"] == 0  # every key exists after populating
        assert 0 < r["lat_p50_us"] <= r["lat_p90_us"] <= r["lat_p99_us"]
        assert r["lat_p99_us"] <= r["lat_p999_us"] <= r["lat_max_us"]
    assert sum(r["gets"] + r["sets"] for r in [*samples, end]) == end["ops"]
    gets = sum(r["gets"] for r in [*samples, end])
    assert 0.8 < gets / end["ops"] < 0.97  # --get-ratio 0.9


def test_gets_of_missing_keys_count_as_misses(kvload: Path, redis: Redis) -> None:
    records = _run(
        kvload, "--port", str(redis.port), "--keys", "1000", "--no-populate",
        "--get-ratio", "1", "--duration-s", "0.6", "--interval-s", "0.3",
    )  # fmt: skip
    assert records[0]["populated"] is False
    assert records[-1]["misses_total"] == records[-1]["ops"] > 0
    assert redis.command("DBSIZE") == b":0\r\n"


@pytest.mark.parametrize(
    ("hot_keys", "popular", "unpopular"),
    [
        pytest.param("last", "key:0000000999", "key:0000000000", id="last"),
        pytest.param("first", "key:0000000000", "key:0000000999", id="first"),
    ],
)
def test_hot_keys_choose_which_keys_are_popular(
    kvload: Path, redis: Redis, hot_keys: str, popular: str, unpopular: str
) -> None:
    # Only SETs, Zipf exponent 3: the hottest key gets 83 % of requests, the
    # coldest a chance of 1e-9 each, so after a short run it alone is unwritten.
    _run(
        kvload, "--port", str(redis.port), "--keys", "1000", "--no-populate",
        "--get-ratio", "0", "--zipf", "3", "--hot-keys", hot_keys,
        "--duration-s", "0.5",
    )  # fmt: skip
    assert redis.command("EXISTS", popular) == b":1\r\n"
    assert redis.command("EXISTS", unpopular) == b":0\r\n"


@pytest.mark.parametrize(
    ("zipf", "top1", "top10"),
    [
        pytest.param("0", 0.01, 0.10, id="uniform"),
        # H(10)/H(1000) and H(100)/H(1000), harmonic numbers
        pytest.param("1", 2.928968 / 7.485471, 5.187378 / 7.485471, id="zipf-1"),
    ],
)
def test_start_line_states_the_skew(
    kvload: Path, redis: Redis, zipf: str, top1: float, top10: float
) -> None:
    start = _run(
        kvload, "--port", str(redis.port), "--keys", "1000", "--zipf", zipf,
        "--duration-s", "0.2",
    )[0]  # fmt: skip
    assert start["top1pct_share"] == pytest.approx(top1, abs=1e-4)
    assert start["top10pct_share"] == pytest.approx(top10, abs=1e-4)


def test_unreachable_server_fails_with_the_address(kvload: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    proc = subprocess.run(
        [str(kvload), "--port", str(port), "--duration-s", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert f"connect 127.0.0.1:{port}" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--host", "localhost"], "numeric IPv4", id="name"),
        pytest.param(["--keys", "0"], "--keys must be > 0", id="no-keys"),
        pytest.param(["--connections", "65"], "--connections", id="conns"),
        pytest.param(["--get-ratio", "1.5"], "--get-ratio", id="ratio"),
        pytest.param(["--hot-keys", "middle"], "--hot-keys", id="hot-keys"),
        pytest.param(["--zipf", "-1"], "--zipf must be", id="zipf"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    kvload: Path, args: list[str], message: str
) -> None:
    assert_usage_error([kvload, *args], message)


def test_unix_socket_instead_of_tcp(kvload: Path, tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "ready to accept connections" in line.lower():
                break
        start, *_, end = _run(
            kvload, "--unix", str(sock), "--keys", "500", "--duration-s", "0.5"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert start["server"] == f"unix:{sock}"
    assert end["ops"] > 0
    assert end["misses_total"] == 0
