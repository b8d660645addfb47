"""The guest-side collector (guest/ht-collect.py) against this host's /proc,
sysfs and tracefs: counters it reports must move when the host does the thing
they count. TLB counting needs root (perf tracepoint events) and tracefs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.integration.peers.hostrun import assert_usage_error, json_records
from tests.integration.peers.programs import GUEST_DIR, parse_json_lines

pytestmark = pytest.mark.integration

COLLECT = GUEST_DIR / "ht-collect.py"
TRACEFS = Path("/sys/kernel/tracing")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ht_collect", COLLECT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


collect = _load()


def _collect(*args: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    return json_records([sys.executable, COLLECT, *args], timeout_s)


def _need_tlb() -> None:
    if os.geteuid() != 0:
        pytest.skip("TLB counting needs root (perf_event_open on a tracepoint)")
    if not (TRACEFS / "events/tlb/tlb_flush").is_dir():
        pytest.skip(f"tracepoint tlb:tlb_flush missing under {TRACEFS}/events")


def test_stat_times_survive_a_comm_with_spaces_and_parens() -> None:
    line = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1 0 999 0 0"
    assert collect.parse_stat_times(line) == ("my (odd) name", 111, 222, 999)


def test_stat_times_of_this_process_are_its_own() -> None:
    text = Path(f"/proc/{os.getpid()}/stat").read_text()
    comm, utime, stime, started = collect.parse_stat_times(text)
    assert comm == Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert utime >= 0
    assert stime >= 0
    assert started > 0


def test_vmstat_keeps_only_the_tiering_counters() -> None:
    text = "nr_free_pages 10\npgpromote_success 7\nnuma_hit 3\npgfault 99\n"
    assert collect.parse_vmstat(text, collect.VMSTAT_PREFIXES) == {
        "pgpromote_success": 7,
        "numa_hit": 3,
    }


def test_tlb_reasons_come_from_the_tracepoint_format() -> None:
    fmt = (
        'print fmt: "pages:%ld reason:%s (%d)", REC->pages, __print_symbolic('
        'REC->reason, { 0, "flush on task switch" }, { 1, "remote shootdown" }, '
        '{ 9, "brand new reason" }), REC->reason'
    )
    assert collect.parse_tlb_reasons(fmt) == {
        0: "task_switch",
        1: "remote_shootdown",
        9: "brand_new_reason",
    }


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        pytest.param("0\n", [0], id="one"),
        pytest.param("0-3\n", [0, 1, 2, 3], id="range"),
        pytest.param("0,2-3,7\n", [0, 2, 3, 7], id="mixed"),
    ],
)
def test_cpulist(text: str, cpus: list[int]) -> None:
    assert collect.parse_cpulist(text) == cpus


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("agent", id="no-kind"),
        pytest.param("agent=exe:python", id="bad-kind"),
        pytest.param("=comm:kswapd", id="no-label"),
        pytest.param("w=pid:abc", id="bad-pid"),
        pytest.param("w=comm:", id="empty-value"),
    ],
)
def test_bad_track_specs_are_refused(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--track"):
        collect.Track.parse(spec)


def test_cpu_of_a_tracked_busy_process_is_counted() -> None:
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt=time.time()\nwhile time.time()-t<20: pass",
        ]
    )
    try:
        records = _collect(
            "--interval-s", "0.5", "--duration-s", "2.0", "--no-tlb",
            "--track", f"busy=pid:{busy.pid}", "--track", "nobody=comm:no-such-comm",
        )  # fmt: skip
    finally:
        busy.kill()
        busy.wait()
    start, *_, end = records
    assert start["tracks"]["busy"] == f"pid:{busy.pid}"
    assert start["tracks"]["kswapd"] == "comm:kswapd"
    assert end["tasks"]["busy"] == 1
    assert end["tasks"]["nobody"] == 0
    assert end["cpu_s"]["nobody"] == {"user_s": 0.0, "sys_s": 0.0}
    # 2 s of a busy loop: some user time even on a crowded 2-core machine, and no
    # more than the collector's 2 s (it counts from its own start, not the child's).
    assert 0.05 < end["cpu_s"]["busy"]["user_s"] <= 2.5


def test_vmstat_counts_from_the_collectors_start() -> None:
    start, *samples, end = _collect("--interval-s", "0.5", "--duration-s", "1.0")
    assert "pgmigrate_success" in start["vmstat_counters"]
    assert "numa_hit" in start["vmstat_counters"]
    assert len(samples) >= 1
    # numa_hit counts page allocations: the host allocates all the time, and a
    # counter taken since the start is never negative.
    assert end["vmstat"]["numa_hit"] > 0
    assert all(v >= 0 for r in [*samples, end] for v in r["vmstat"].values())
    assert set(end["node_free_kib"]) == {str(n) for n in start["nodes"]}
    assert all(v > 0 for v in end["node_free_kib"].values())


def test_times_follow_the_interval() -> None:
    records = _collect("--interval-s", "0.4", "--duration-s", "1.6", "--no-tlb")
    times = [r["t_s"] for r in records[1:]]
    assert times == pytest.approx([0.4, 0.8, 1.2, 1.6], abs=0.2)
    assert [r["type"] for r in records] == ["start", *["sample"] * 3, "end"]


def test_no_tlb_says_so() -> None:
    start, end = _collect("--interval-s", "0.3", "--duration-s", "0.3", "--no-tlb")
    assert start["tlb_error"] == "disabled by --no-tlb"
    assert end["tlb_flush"] is None


MUNMAP_LOOP = """
import mmap, sys
for _ in range(int(sys.argv[1])):
    m = mmap.mmap(-1, 4096 * 4)
    m[0] = 1; m[4096] = 1
    m.close()
"""


def test_tlb_flushes_by_reason_follow_munmap() -> None:
    _need_tlb()
    proc = subprocess.Popen(
        [sys.executable, str(COLLECT), "--interval-s", "0.3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    start = next(parse_json_lines([proc.stdout.readline()]))
    assert start["tlb_error"] is None, start["tlb_error"]
    subprocess.run([sys.executable, "-c", MUNMAP_LOOP, "3000"], check=True)
    done = time.time()
    while True:  # the first sample taken after the loop ended
        sample = next(parse_json_lines([proc.stdout.readline()]))
        if sample["unix_s"] > done:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    flushes = sample["tlb_flush"]
    assert set(flushes) == set(start["tlb_reasons"])
    # Each munmap of touched pages flushes this mm's TLB once: 3000 at least, on
    # this CPU (local) or, when the task had run elsewhere, remotely as well.
    assert flushes["local_mm_shootdown"] + flushes["remote_shootdown"] >= 3000
    # A filter the kernel ignored would count every flush under every reason.
    assert len(set(flushes.values())) > 1


def test_sigterm_ends_with_an_end_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(COLLECT), "--interval-s", "5", "--no-tlb"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert next(parse_json_lines([proc.stdout.readline()]))["type"] == "start"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    records = list(parse_json_lines(out))
    assert [r["type"] for r in records] == ["end"]
    assert records[0]["t_s"] < 4


def test_bad_interval_is_a_usage_error() -> None:
    assert_usage_error(
        [sys.executable, COLLECT, "--interval-s", "0"], "--interval-s must be > 0"
    )


def test_numa_maps_parser_sums_nodes_in_kib() -> None:
    text = (
        "55d0 default file=/bin/x mapped=3 N0=3 kernelpagesize_kB=4\n"
        "7f00 default anon=10 dirty=10 N0=4 N1=6 kernelpagesize_kB=4\n"
        "7f80 default anon=1 N1=1 kernelpagesize_kB=2048\n"
        "7fff default stack anon=2 dirty=2 N0=2 kernelpagesize_kB=4\n"
    )
    assert collect.parse_numa_maps_kib(text) == {"0": 36, "1": 24 + 2048}


HOLD_64MIB = """
import sys
buf = bytearray(64 << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def test_numa_maps_reports_a_process_memory_per_node() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_64MIB],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        start, end = _collect(
            "--interval-s", "0.3", "--duration-s", "0.3", "--no-tlb",
            "--numa-maps", f"holder=pid:{holder.pid}",
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert start["numa_maps"] == {"holder": f"pid:{holder.pid}"}
    per_node = end["numa_kib"]["holder"]
    assert set(per_node) <= {str(n) for n in start["nodes"]}
    assert sum(per_node.values()) >= 64 << 10
