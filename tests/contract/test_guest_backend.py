"""One contract for every GuestBackend: the emulator and the real Linux kernel.

``-m integration`` runs the same tests on this machine's kernel (perf software
events, move_pages within the nodes present); plain ``pytest`` runs them on emu.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from agent_guest.backend import (
    PAGE_SIZE,
    Capability,
    GuestBackend,
    SamplerSettings,
    SampleSource,
    Tier,
)
from agent_guest.errors import NoSuchProcess
from hypertier_common.errors import Unsupported

MiB = 1 << 20
UNMAPPED = 0x1000  # page 1: never mapped by Linux (mmap_min_addr) nor by emu

# A child that maps a private 16 MiB buffer (like malloc), prints its address,
# and writes one byte per page of the first half on "touch" (the second half
# stays untouched).
CHILD = r"""
import mmap, sys
import numpy as np
mm = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
a = np.frombuffer(mm, np.uint8)
print(a.ctypes.data, flush=True)
for line in sys.stdin:
    if line.strip() != "touch":
        break
    a[: 8 << 20 : 4096] += 1
    print("ok", flush=True)
"""


@dataclass
class Target:
    """A process with a known buffer [base, base+size) of which [base, touched_end)
    gets accessed by ``touch``, and a page ``idle_addr`` of ``idle_pid`` that is
    mapped but never touched."""

    pid: int
    base: int
    size: int
    touched_end: int
    idle_pid: int
    idle_addr: int


class Harness:
    backend: GuestBackend

    def spawn(self) -> Target:
        raise NotImplementedError

    def touch(self, t: Target) -> None:
        raise NotImplementedError

    def kill(self, t: Target) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.backend.close()


class EmuHarness(Harness):
    """The emulator with no PMU, like a VM without a virtual PMU."""

    def __init__(self) -> None:
        from emu.backends.guest import EmuGuestBackend
        from emu.machine import World
        from emu.workloads.synthetic import Gups

        self.world = World(1 << 30, 4 << 30, seed=7)
        self.world.add_vm("vm", 2, 64 * MiB, 256 * MiB)
        self._gups = Gups
        self.backend = EmuGuestBackend(self.world, "vm", pmu="none")

    def spawn(self) -> Target:
        pid = self.world.spawn("vm", self._gups(4096, seed=1), 10**12)
        idle = self.world.spawn("vm", None, npages=1024, prefault=False)
        base = self.world.process("vm", pid).base_addr
        idle_base = self.world.process("vm", idle).base_addr
        return Target(pid, base, 16 * MiB, base + 16 * MiB, idle, idle_base + PAGE_SIZE)

    def touch(self, t: Target) -> None:
        self.world.clock.advance(0.1)

    def kill(self, t: Target) -> None:
        self.world.kill("vm", t.pid)


class LinuxHarness(Harness):
    def __init__(self) -> None:
        from agent_guest.linux_backend import LinuxGuestBackend

        if os.geteuid() != 0:
            pytest.skip("linux contract needs root (CAP_PERFMON, CAP_SYS_NICE)")
        self.backend = LinuxGuestBackend()
        caps = self.backend.capabilities()
        if Capability.PAGE_FAULT_SAMPLING not in caps:
            pytest.skip(
                "perf software events unavailable: "
                + self.backend.unavailable()[Capability.PAGE_FAULT_SAMPLING]
            )
        self.children: list[subprocess.Popen[str]] = []

    def spawn(self) -> Target:
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.children.append(p)
        assert p.stdout is not None
        base = int(p.stdout.readline())
        return Target(p.pid, base, 16 * MiB, base + 8 * MiB, p.pid, base + 12 * MiB)

    def _proc(self, t: Target) -> subprocess.Popen[str]:
        return next(p for p in self.children if p.pid == t.pid)

    def touch(self, t: Target) -> None:
        p = self._proc(t)
        assert p.stdin is not None
        assert p.stdout is not None
        p.stdin.write("touch\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ok"

    def kill(self, t: Target) -> None:
        p = self._proc(t)
        p.kill()
        p.wait(timeout=10)

    def close(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
        super().close()


@pytest.fixture(params=["emu", pytest.param("linux", marks=pytest.mark.integration)])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h: Harness = EmuHarness() if request.param == "emu" else LinuxHarness()
    yield h
    h.close()


@pytest.fixture
def target(harness: Harness) -> Target:
    return harness.spawn()


def _absent_node(backend: GuestBackend) -> int:
    return max(n.node for n in backend.numa_nodes()) + 1


def _pages(t: Target, n: int = 16) -> np.ndarray:  # type: ignore[type-arg]
    return (t.base + np.arange(n, dtype=np.uint64) * PAGE_SIZE).astype(np.uint64)


def test_backend_satisfies_the_protocol(harness: Harness) -> None:
    backend: GuestBackend = harness.backend
    assert isinstance(backend, GuestBackend)


def test_page_fault_sampling_and_move_pages_are_offered(harness: Harness) -> None:
    caps = harness.backend.capabilities()
    assert {Capability.PAGE_FAULT_SAMPLING, Capability.MOVE_PAGES} <= caps


def test_numa_nodes_include_a_fast_node_with_cpus(harness: Harness) -> None:
    nodes = harness.backend.numa_nodes()
    assert any(n.tier is Tier.FAST and n.has_cpus for n in nodes)
    assert all(0 <= n.free_bytes <= n.total_bytes for n in nodes)


def test_processes_list_the_target_with_its_rss(
    harness: Harness, target: Target
) -> None:
    procs = {p.pid: p for p in harness.backend.processes()}
    assert procs[target.pid].rss_bytes > 0


def test_vmas_contain_the_buffer(harness: Harness, target: Target) -> None:
    vmas = harness.backend.vmas(target.pid)
    assert any(
        v.start <= target.base and target.base + target.size <= v.end for v in vmas
    )


def test_touched_pages_report_their_node(harness: Harness, target: Target) -> None:
    harness.touch(target)
    nodes = harness.backend.page_nodes(target.pid, _pages(target))
    present = {n.node for n in harness.backend.numa_nodes()}
    assert set(nodes.tolist()) <= present


def test_move_of_an_unmapped_address_reports_efault(
    harness: Harness, target: Target
) -> None:
    harness.touch(target)
    addrs = np.array([UNMAPPED, target.base], np.uint64)
    fast = harness.backend.numa_nodes()[0].node
    res = harness.backend.move_pages(target.pid, addrs, fast)
    assert res.status[0] == -errno.EFAULT
    assert res.failures.get(errno.EFAULT) == 1


def test_an_untouched_page_reports_enoent(harness: Harness, target: Target) -> None:
    addrs = np.array([target.idle_addr], np.uint64)
    assert harness.backend.page_nodes(target.idle_pid, addrs).tolist() == [
        -errno.ENOENT
    ]
    fast = harness.backend.numa_nodes()[0].node
    res = harness.backend.move_pages(target.idle_pid, addrs, fast)
    assert res.status.tolist() == [-errno.ENOENT]
    assert res.moved == 0


def test_move_to_an_absent_node_reports_enodev(
    harness: Harness, target: Target
) -> None:
    harness.touch(target)
    res = harness.backend.move_pages(
        target.pid, _pages(target, 4), _absent_node(harness.backend)
    )
    assert (res.status == -errno.ENODEV).all()
    assert res.moved == 0


def test_move_to_the_current_node_moves_nothing(
    harness: Harness, target: Target
) -> None:
    harness.touch(target)
    addrs = _pages(target, 8)
    nodes = harness.backend.page_nodes(target.pid, addrs)
    node = int(nodes[0])
    res = harness.backend.move_pages(target.pid, addrs[nodes == node], node)
    assert (res.status == node).all()
    assert res.moved == 0


def test_node_bytes_follow_a_move_and_stay_within_the_rss(
    harness: Harness, target: Target
) -> None:
    """What the process holds per node: its touched pages where page_nodes
    says, and no more than its resident set."""
    harness.touch(target)
    b = harness.backend
    addrs = _pages(target, 8)
    node = int(b.page_nodes(target.pid, addrs)[0])
    b.move_pages(target.pid, addrs, node)
    by_node = b.node_bytes(target.pid)
    present = {n.node for n in b.numa_nodes()}
    rss = {p.pid: p.rss_bytes for p in b.processes()}[target.pid]
    assert set(by_node) <= present
    assert by_node[node] >= 8 * PAGE_SIZE
    assert sum(by_node.values()) <= rss + 64 * PAGE_SIZE  # read apart: may grow


@pytest.mark.parametrize("call", ["move_pages", "page_nodes", "vmas", "node_bytes"])
def test_a_dead_process_raises_no_such_process(
    harness: Harness, target: Target, call: str
) -> None:
    harness.kill(target)
    b = harness.backend
    calls = {
        "move_pages": lambda: b.move_pages(target.pid, _pages(target, 2), 0),
        "page_nodes": lambda: b.page_nodes(target.pid, _pages(target, 2)),
        "vmas": lambda: b.vmas(target.pid),
        "node_bytes": lambda: b.node_bytes(target.pid),
    }
    with pytest.raises(NoSuchProcess) as info:
        calls[call]()
    assert info.value.pid == target.pid


def test_samples_from_a_process_touching_a_buffer_fall_within_it(
    harness: Harness, target: Target
) -> None:
    b = harness.backend
    b.start_sampling(
        [target.pid], SamplerSettings(SampleSource.PAGE_FAULT, 1, ring_pages=256)
    )
    addrs, pids = [], []
    for _ in range(2):
        harness.touch(target)
        batch = b.read_samples()
        addrs.append(batch.addr)
        pids.append(batch.pid)
    b.stop_sampling()
    addr = np.concatenate(addrs)
    assert addr.shape[0] >= 100
    inside = (addr >= target.base) & (addr < target.touched_end)
    assert inside.mean() >= 0.99
    assert set(np.concatenate(pids).tolist()) == {target.pid}


def test_reading_samples_before_starting_is_unsupported(harness: Harness) -> None:
    with pytest.raises(Unsupported):
        harness.backend.read_samples()


def test_a_source_the_machine_lacks_is_unsupported(
    harness: Harness, target: Target
) -> None:
    caps = harness.backend.capabilities()
    if Capability.PEBS in caps:
        pytest.skip("this machine has PEBS")
    with pytest.raises(Unsupported, match="pebs"):
        harness.backend.start_sampling([target.pid], SamplerSettings(SampleSource.PEBS))


def test_cpu_time_never_decreases(harness: Harness) -> None:
    a = harness.backend.cpu_time_s()
    b = harness.backend.cpu_time_s()
    assert 0.0 <= a <= b


def test_counters_are_vmstat_integers_that_never_decrease(harness: Harness) -> None:
    first = harness.backend.counters()
    assert first, "no counters at all"
    vmstat = re.compile(r"^(nr_tlb_|pgmigrate_|numa_|pgpromote_|pgdemote_)\w+$")
    for name, value in first.items():
        assert vmstat.match(name), name
        assert type(value) is int, (name, value)
        assert value >= 0, (name, value)
    later = harness.backend.counters()
    assert all(later[name] >= value for name, value in first.items())
