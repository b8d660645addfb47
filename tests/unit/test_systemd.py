"""hypertier_common.systemd against real sockets and files, and the packaged units
against systemd-analyze (the supervision itself runs under a real systemd in
tests/integration/test_systemd_boot.py)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypertier_common.clock import SystemClock
from hypertier_common.systemd import (
    JournalFormatter,
    Notifier,
    journal_priority,
    stderr_handler,
    stream_is_journal,
    wait_beating,
)

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(short_tmp / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="htsd") as d:
        yield Path(d)


def test_ready_status_and_watchdog_reach_the_socket(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("2 VMs")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 VMs"
    assert n.watchdog("line one\nline two")
    assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=line one line two"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_abstract_socket_names_start_with_at() -> None:
    name = f"hypertier-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("up")
        assert sock.recv(4096) == b"STATUS=up"


def test_without_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval_s is None


def test_a_vanished_supervisor_does_not_raise(short_tmp: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(short_tmp / "gone")})
    assert n.enabled
    assert not n.watchdog()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "x"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier(env).watchdog_interval_s == interval


def test_heartbeats_come_while_the_loop_waits_and_stop_when_it_stops() -> None:
    beats: list[float] = []
    stop = threading.Event()
    clock = SystemClock()
    start = clock.monotonic()
    wait_beating(clock, stop, start + 0.35, lambda: beats.append(time.monotonic()), 0.1)
    assert 4 <= len(beats) <= 6  # now, then every 0.1 s of a 0.35 s wait
    assert clock.monotonic() - start >= 0.35
    beats.clear()
    stop.set()
    wait_beating(clock, stop, clock.monotonic() + 10, lambda: beats.append(0.0), 0.1)
    assert len(beats) == 1


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
    ],
)
def test_levels_map_to_syslog_priorities(level: int, priority: int) -> None:
    assert journal_priority(level) == priority


def test_every_line_of_a_traceback_keeps_the_error_priority() -> None:
    fmt = JournalFormatter(logging.Formatter("%(name)s: %(message)s"))
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", None, exc_info=True
        )
        import sys

        record.exc_info = sys.exc_info()
    lines = fmt.format(record).split("\n")
    assert len(lines) > 3
    assert lines[0] == "<3>x: failed"
    assert all(line.startswith("<3>") for line in lines)


def test_journal_stream_detected_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as o:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(stream, env)
        assert not stream_is_journal(o, env)
        assert not stream_is_journal(stream, {})
        handler = stderr_handler(logging.Formatter("%(message)s"), stream, env)
        handler.emit(logging.LogRecord("x", logging.WARNING, "", 1, "hi", None, None))
        plain = stderr_handler(logging.Formatter("%(message)s"), o, env)
        plain.emit(logging.LogRecord("x", logging.WARNING, "", 1, "hi", None, None))
    assert (tmp_path / "stream").read_text() == "<4>hi\n"
    assert (tmp_path / "other").read_text() == "hi\n"


# --- the packaged units ------------------------------------------------------------


@pytest.mark.parametrize("unit", ["hypertier-host.service", "hypertier-guest.service"])
def test_packaged_unit_exposure_is_at_most_3(unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", str(UNITS / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 3.0, proc.stdout


@pytest.mark.parametrize(
    ("unit", "lines"),
    [
        (
            "hypertier-host.service",
            ["Type=notify", "WatchdogSec=30s", "RestartPreventExitStatus=2"],
        ),
        (
            "hypertier-guest.service",
            ["Type=notify", "WatchdogSec=30s", "RestartPreventExitStatus=2"],
        ),
    ],
)
def test_packaged_units_are_supervised(unit: str, lines: list[str]) -> None:
    text = (UNITS / unit).read_text().splitlines()
    for line in lines:
        assert line in text


def test_host_loop_beats_only_while_its_ticks_complete() -> None:
    # The watchdog ping is the loop's: a tick that cannot finish (here it waits
    # for the daemon's lock, held by this test) stops the pings; they resume after.
    from agent_host.config import loads
    from agent_host.daemon import Daemon
    from emu.backends.host import EmuHostBackend
    from emu.machine import World

    world = World(host_fast_bytes=1 << 30, host_slow_bytes=1 << 30)
    world.add_vm("vm0", 2, 128 << 20, 128 << 20, 512 << 20, 512 << 20)
    cfg = loads("[policy]\ninterval_s = 0.02\nhost_reserved_bytes = 0\n")
    daemon = Daemon(cfg, EmuHostBackend(world), SystemClock())
    beats: list[float] = []
    thread = threading.Thread(
        target=daemon.run,
        kwargs={
            "heartbeat": lambda: beats.append(time.monotonic()),
            "heartbeat_every_s": 0.01,
        },
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(beats) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(beats) >= 5
        with daemon._lock:  # the next tick blocks here
            time.sleep(0.2)  # let the loop reach it
            held = len(beats)
            time.sleep(0.5)
            assert len(beats) == held  # no beat while the tick hangs
        deadline = time.monotonic() + 10
        while len(beats) == held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(beats) > held
    finally:
        daemon.stop()
        thread.join(10)
    assert not thread.is_alive()
