"""The guest agent on this machine's real kernel: perf software and tracepoint
page-fault sampling, ring-buffer loss accounting, soft-dirty scanning, the
daemon end to end, and (with two or more NUMA nodes) the placement scenario.

Needs root (CAP_PERFMON, CAP_SYS_NICE). Tests that need more name what is
missing in their skip reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent_guest import cli, config
from agent_guest.backend import (
    PAGE_SIZE,
    AccessSamples,
    Capability,
    GuestBackend,
    SamplerSettings,
    SampleSource,
)
from agent_guest.daemon import Daemon
from agent_guest.linux_backend import LinuxGuestBackend
from hypertier_common.clock import SystemClock
from hypertier_common.errors import Unsupported

pytestmark = pytest.mark.integration

MiB = 1 << 20
TRACEFS = Path("/sys/kernel/tracing")

# A child with a private 16 MiB buffer. Commands: "touch A B" writes one byte
# per page of [A, B) MiB of the buffer; "hot A B N" does that N times.
CHILD = r"""
import mmap, sys
import numpy as np
mm = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
a = np.frombuffer(mm, np.uint8)
print(a.ctypes.data, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    lo, hi = int(args[0]) << 20, int(args[1]) << 20
    for _ in range(int(args[2]) if cmd == "hot" else 1):
        a[lo:hi:4096] += 1
    print("ok", flush=True)
"""


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (or CAP_PERFMON + CAP_SYS_NICE): run as root")
    caps = LinuxGuestBackend().capabilities()
    if Capability.PAGE_FAULT_SAMPLING not in caps:
        reason = LinuxGuestBackend().unavailable()[Capability.PAGE_FAULT_SAMPLING]
        pytest.skip(f"perf software events unavailable: {reason}")


@pytest.fixture
def child() -> Iterator[Child]:
    c = Child()
    yield c
    c.close()


@pytest.fixture
def backend() -> Iterator[LinuxGuestBackend]:
    b = LinuxGuestBackend(induce_write_faults=False)
    yield b
    b.close()


def _inside(addr: np.ndarray, c: Child, lo_mib: int, hi_mib: int) -> float:  # type: ignore[type-arg]
    lo, hi = c.base + (lo_mib << 20), c.base + (hi_mib << 20)
    return float(np.mean((addr >= lo) & (addr < hi)))


def test_linux_backend_satisfies_the_protocol(backend: LinuxGuestBackend) -> None:
    typed: GuestBackend = backend
    assert isinstance(typed, GuestBackend)


def test_missing_pmus_are_named_with_the_sysfs_path(backend: LinuxGuestBackend) -> None:
    caps = backend.capabilities()
    if Capability.PEBS in caps:
        pytest.skip("this machine has a PEBS-capable PMU")
    assert "/sys/bus/event_source/devices" in backend.unavailable()[Capability.PEBS]


def _touch_and_sample(
    backend: LinuxGuestBackend, child: Child, lo: int, hi: int
) -> AccessSamples:
    """Sample every page fault of ``child`` while it touches MiB [lo, hi)."""
    backend.start_sampling(
        [child.pid], SamplerSettings(SampleSource.PAGE_FAULT, 1, ring_pages=256)
    )
    child.send(f"touch {lo} {hi}")
    return backend.read_samples()


def test_page_fault_samples_carry_the_faulting_address(
    backend: LinuxGuestBackend, child: Child
) -> None:
    batch = _touch_and_sample(backend, child, 0, 4)
    assert len(batch) >= 1000  # 1024 pages touched, one fault each
    assert _inside(batch.addr, child, 0, 4) >= 0.99
    assert (batch.time_ns > 0).all()


def test_tracepoint_page_faults_carry_the_faulting_address(child: Child) -> None:
    if not (TRACEFS / "events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
    b = LinuxGuestBackend(fault_event="tracepoint", induce_write_faults=False)
    try:
        if Capability.TRACEPOINTS not in b.capabilities():
            pytest.skip(b.unavailable()[Capability.TRACEPOINTS])
        batch = _touch_and_sample(b, child, 4, 8)
    finally:
        b.close()
    assert len(batch) >= 1000
    assert _inside(batch.addr, child, 4, 8) >= 0.99


def _perf_fds() -> int:
    fds = Path("/proc/self/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return sum(link == "anon_inode:[perf_event]" for link in links)


def test_stopped_sampling_delivers_nothing_and_restarts_without_reopening(
    backend: LinuxGuestBackend, child: Child
) -> None:
    """A pause keeps the events (no kernel text patching when the last target
    goes away); what is faulted meanwhile is never delivered."""
    settings = SamplerSettings(SampleSource.PAGE_FAULT, 1, ring_pages=256)
    base = _perf_fds()
    backend.start_sampling([child.pid], settings)
    opened = _perf_fds()
    assert opened > base
    backend.stop_sampling()
    with pytest.raises(Unsupported):
        backend.read_samples()
    child.send("touch 8 12")  # while stopped
    backend.start_sampling([child.pid], settings)
    assert _perf_fds() == opened
    child.send("touch 12 16")
    batch = backend.read_samples()
    assert len(batch) >= 1000
    assert _inside(batch.addr, child, 12, 16) >= 0.99
    backend.start_sampling([child.pid], SamplerSettings(SampleSource.PAGE_FAULT, 2))
    assert _perf_fds() == opened  # new period: new events, the old ones closed
    backend.close()
    assert _perf_fds() == base


def test_an_overflowing_ring_counts_lost_records(
    backend: LinuxGuestBackend, child: Child
) -> None:
    # One 4 KiB data page holds 128 records of 32 bytes; 2048 faults overflow it.
    backend.start_sampling(
        [child.pid], SamplerSettings(SampleSource.PAGE_FAULT, 1, ring_pages=1)
    )
    child.send("touch 0 8")
    first = backend.read_samples()
    child.send("touch 8 16")  # the kernel reports the loss before its next record
    second = backend.read_samples()
    assert len(first) <= 128 * os.cpu_count()  # type: ignore[operator]
    assert first.lost + second.lost > 0


def test_soft_dirty_scan_finds_written_pages(
    backend: LinuxGuestBackend, child: Child
) -> None:
    if Capability.SOFT_DIRTY_SCAN not in backend.capabilities():
        pytest.skip(backend.unavailable()[Capability.SOFT_DIRTY_SCAN])
    child.send("touch 0 16")
    backend.start_sampling([child.pid], SamplerSettings(SampleSource.SOFT_DIRTY))
    child.send("touch 2 3")
    batch = backend.read_samples()
    assert _inside(batch.addr, child, 2, 3) >= 0.99
    assert len(batch) >= 256


def test_the_daemon_finds_the_hot_region_of_a_real_process(child: Child) -> None:
    cfg = config.loads(
        f'[guest]\nbackend = "linux"\ncontrol_socket = "/tmp/unused.sock"\n'
        '[sampler]\nsource = "page-fault"\nperiod = 1\nmax_period = 1\n'
        f"[targets]\npids = [{child.pid}]\n"
        "[classify]\nmin_range_bytes = 1048576\n"
    )
    d = Daemon(cfg, LinuxGuestBackend(induce_write_faults=False), SystemClock())
    try:
        d.tick()  # start sampling
        child.send("touch 0 2")  # first touch: every page faults once
        d.tick()
        st = d.status()
        assert st["samples"] >= 500  # type: ignore[operator]
        assert st["hot_bytes"] > 0  # type: ignore[operator]
        assert st["tick_failures"] == 0
        assert st["failures"] == {}
    finally:
        d.shutdown()


def test_cli_run_once_on_the_real_kernel(tmp_path: Path) -> None:
    path = tmp_path / "guest.toml"
    path.write_text(
        '[sampler]\nsource = "page-fault"\n[targets]\nmin_rss_bytes = 1099511627776\n'
    )
    sock = tmp_path / "guest.sock"
    rc = cli.main(
        ["run", "-c", str(path), "--backend", "linux", "--socket", str(sock), "--once"]
    )
    assert rc == 0
    assert not sock.exists()


# A child that maps (private, writable) a file whose name is not UTF-8, then
# waits: argv[1] is the directory (bytes via surrogateescape).
NON_UTF8_CHILD = r"""
import mmap, os, sys
path = os.path.join(os.fsencode(sys.argv[1]), b"map-\xff\xfe.bin")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4 << 20)
mm = mmap.mmap(fd, 4 << 20, flags=mmap.MAP_PRIVATE)
for off in range(0, 4 << 20, 4096):
    mm[off] = 1
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def non_utf8_child(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", NON_UTF8_CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait(timeout=10)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def test_vmas_of_a_process_mapping_a_non_utf8_file_name(
    backend: LinuxGuestBackend, non_utf8_child: subprocess.Popen[str], tmp_path: Path
) -> None:
    name = os.fsencode(tmp_path) + b"/map-\xff\xfe.bin"
    vmas = backend.vmas(non_utf8_child.pid)
    (vma,) = [v for v in vmas if os.fsencode(v.path) == name]
    assert vma.size_bytes == 4 * MiB


def test_the_daemon_ticks_on_with_a_target_mapping_a_non_utf8_file(
    non_utf8_child: subprocess.Popen[str],
) -> None:
    cfg = config.loads(
        '[guest]\nbackend = "linux"\ncontrol_socket = "/tmp/unused.sock"\n'
        '[sampler]\nsource = "page-fault"\n'
        f"[targets]\npids = [{non_utf8_child.pid}]\nmin_rss_bytes = 0\n"
    )
    d = Daemon(cfg, LinuxGuestBackend(induce_write_faults=False), SystemClock())
    try:
        d.tick()
        d.tick()
        st = d.status()
        assert st["tick_failures"] == 0
        assert st["failures"] == {}
        assert non_utf8_child.pid in st["targets"]  # type: ignore[operator]
    finally:
        d.shutdown()


def test_cli_run_once_with_a_target_mapping_a_non_utf8_file(
    non_utf8_child: subprocess.Popen[str], tmp_path: Path
) -> None:
    path = tmp_path / "guest.toml"
    path.write_text(
        '[sampler]\nsource = "page-fault"\n'
        f"[targets]\npids = [{non_utf8_child.pid}]\nmin_rss_bytes = 0\n"
    )
    sock = tmp_path / "guest.sock"
    rc = cli.main(
        ["run", "-c", str(path), "--backend", "linux", "--socket", str(sock), "--once"]
    )
    assert rc == 0


def _two_nodes() -> tuple[int, int]:
    nodes = LinuxGuestBackend().numa_nodes()
    mem = [n for n in nodes if n.total_bytes > 0]
    if len(mem) < 2:
        pytest.skip(
            f"needs >= 2 NUMA nodes with memory (have {len(mem)}): run in a QEMU "
            "guest with -numa node,memdev=... for a fast and a CPU-less slow node"
        )
    return mem[0].node, mem[1].node


def test_move_pages_between_nodes_reports_the_new_node(
    backend: LinuxGuestBackend, child: Child
) -> None:
    _fast, slow = _two_nodes()
    child.send("touch 0 1")
    addrs = (child.base + np.arange(256, dtype=np.uint64) * PAGE_SIZE).astype(np.uint64)
    res = backend.move_pages(child.pid, addrs, slow)
    assert (res.status == slow).mean() >= 0.95
    assert (backend.page_nodes(child.pid, addrs) == slow).mean() >= 0.95


def test_hot_region_reaches_the_fast_node(child: Child) -> None:
    """The emulator scenario on a real two-node guest: hot pages go fast."""
    fast, slow = _two_nodes()
    child.send("touch 0 16")
    backend = LinuxGuestBackend()
    addrs = (child.base + np.arange(4096, dtype=np.uint64) * PAGE_SIZE).astype(
        np.uint64
    )
    backend.move_pages(child.pid, addrs, slow)  # worst case: everything slow
    cfg = config.loads(
        f'[guest]\nbackend = "linux"\nfast_nodes = [{fast}]\nslow_nodes = [{slow}]\n'
        'control_socket = "/tmp/unused.sock"\n'
        '[sampler]\nsource = "auto"\nperiod = 1\nmax_period = 1\n'
        f"[targets]\npids = [{child.pid}]\n"
        "[classify]\nmin_range_bytes = 1048576\n"
        "[mover]\nfast_reserve_bytes = 0\n"
    )
    d = Daemon(cfg, backend, SystemClock())
    try:
        for _ in range(4):
            child.send("hot 4 6 20")  # 2 MiB hot, written repeatedly
            d.tick()
        hot = addrs[(4 << 20) // PAGE_SIZE : (6 << 20) // PAGE_SIZE]
        assert (backend.page_nodes(child.pid, hot) == fast).mean() >= 0.95
    finally:
        d.shutdown()


OWN_MEMORY = r"""
import json, sys
import numpy as np
from hypertier_common.errors import BackendError
from agent_guest.linux_backend import LinuxGuestBackend
node = int(sys.argv[1])
b = LinuxGuestBackend(induce_write_faults=False)
table = np.ones(1 << 20)  # 8 MiB of the agent's own tables
try:
    pages = b.keep_own_memory(node)
except BackendError as err:
    print(json.dumps({"error": str(err)}))
    raise SystemExit(0)
later = np.ones(1 << 20)  # allocated after: follows the preference
maps = open("/proc/self/numa_maps").read()
print(json.dumps({"pages": pages, "maps": maps}))
"""


def _own_memory(node: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", OWN_MEMORY, str(node)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_agent_keeps_its_own_memory_on_the_node_asked() -> None:
    # the last node with memory: the slow node of a two-node guest, node 0 here
    node = [n for n in LinuxGuestBackend().numa_nodes() if n.total_bytes][-1].node
    got = _own_memory(node)
    pages = got["pages"]
    assert isinstance(pages, int)
    assert pages >= 2048  # the 8 MiB table at least
    assert f"prefer:{node}" in str(got["maps"])
    assert f"N{node}=" in str(got["maps"])


def test_own_memory_on_a_node_that_does_not_exist_is_refused_with_its_cause() -> None:
    got = _own_memory(1023)
    assert "set_mempolicy(node 1023)" in str(got["error"])
