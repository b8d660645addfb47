"""Semantics of the emulated machine: what move_pages, resize and tracking do."""

from __future__ import annotations

import errno
import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.machine import FAST, PAGE_SIZE, SLOW, NoSuchProcessError, World
from emu.machine.execution import _TLB_WINDOW, _tlb_reach
from emu.machine.params import Params
from emu.workloads import WORKLOADS, make_workload

MIB = 1 << 20


def _world(fast_mib: int = 64, slow_mib: int = 256, seed: int = 1) -> World:
    w = World(1 << 30, 4 << 30, seed=seed)
    w.add_vm("vm", 2, fast_mib * MIB, slow_mib * MIB)
    return w


def _spawn(
    w: World, npages: int = 32768, accesses: int = 10**7, name: str = "gups"
) -> int:
    return w.spawn("vm", make_workload(name, npages, seed=3), accesses)


def _addrs(w: World, pid: int, vpns: np.ndarray) -> np.ndarray:
    return w.process("vm", pid).addr_of(np.asarray(vpns))


def test_first_touch_fills_fast_node_then_slow() -> None:
    w = _world(fast_mib=64)
    pid = _spawn(w, npages=32768)
    nodes = w.page_nodes("vm", pid, _addrs(w, pid, np.arange(32768)))
    assert np.all(nodes[:16384] == FAST)
    assert np.all(nodes[16384:] == SLOW)


def test_the_guest_kernel_keeps_its_reserve_free_on_each_node() -> None:
    w = World(1 << 30, 4 << 30, Params(node_reserve_pct=1.0), seed=1)
    w.add_vm("vm", 2, 64 * MIB, 256 * MIB)
    kept = w.node_reserve_pages(w.vm("vm"), FAST)
    assert kept == 16384 // 100
    pid = _spawn(w, npages=32768)
    # first touch falls back to the slow node at the reserve, not at full
    nodes = w.page_nodes("vm", pid, _addrs(w, pid, np.arange(32768)))
    assert int(np.count_nonzero(nodes == FAST)) == 16384 - kept
    # a move into the reserve fails as on a full node; one out makes room
    slow = _addrs(w, pid, np.flatnonzero(nodes == SLOW)[:4])
    assert np.all(w.move_pages("vm", pid, slow, FAST) == -errno.ENOMEM)
    fast = _addrs(w, pid, np.flatnonzero(nodes == FAST)[:4])
    assert np.all(w.move_pages("vm", pid, fast, SLOW) == SLOW)
    assert np.all(w.move_pages("vm", pid, slow, FAST) == FAST)


def test_move_to_full_node_reports_enomem() -> None:
    w = _world(fast_mib=64)
    pid = _spawn(w, npages=32768)
    status = w.move_pages("vm", pid, _addrs(w, pid, np.arange(16384, 16400)), FAST)
    assert np.all(status == -errno.ENOMEM)


def test_move_outside_mapping_reports_efault() -> None:
    w = _world()
    pid = _spawn(w)
    status = w.move_pages("vm", pid, np.array([4096], np.uint64), SLOW)
    assert status.tolist() == [-errno.EFAULT]


def test_move_of_untouched_page_reports_enoent() -> None:
    w = _world()
    pid = w.spawn("vm", None, npages=4096, prefault=False)
    status = w.move_pages("vm", pid, _addrs(w, pid, np.arange(3)), SLOW)
    assert status.tolist() == [-errno.ENOENT] * 3


def test_move_of_pinned_page_reports_ebusy() -> None:
    w = _world()
    pid = _spawn(w)
    pinned = np.flatnonzero(w.process("vm", pid).pinned)
    assert len(pinned) > 0
    status = w.move_pages("vm", pid, _addrs(w, pid, pinned[:5]), SLOW)
    assert np.all(status == -errno.EBUSY)


def _movable(w: World, pid: int, n: int) -> np.ndarray:
    vpns = np.arange(n)
    return vpns[~w.process("vm", pid).pinned[vpns]]


def test_move_pages_flushes_once_per_migration_batch() -> None:
    w = _world()
    pid = _spawn(w)  # two threads on two vCPUs: flushes are batched
    vpns = _movable(w, pid, 1200)
    status = w.move_pages("vm", pid, _addrs(w, pid, vpns), SLOW)
    assert np.all(status == SLOW)
    c = w.vm("vm").counters
    batches = -(-len(vpns) // w.params.cost.migrate_batch_pages)
    assert batches == 3
    assert c.guest_pages_moved == len(vpns)
    assert c.tlb_local_flush_all == batches
    assert c.tlb_remote_flush == batches
    assert c.tlb_local_flush_one == 0
    w.check_invariants()


def test_move_pages_of_a_one_vcpu_process_flushes_each_page_locally() -> None:
    w = _world()
    pid = w.spawn("vm", make_workload("gups", 32768, seed=3), 10**7, threads=1)
    vpns = _movable(w, pid, 100)
    w.move_pages("vm", pid, _addrs(w, pid, vpns), SLOW)
    c = w.vm("vm").counters
    assert c.tlb_local_flush_one == len(vpns)
    assert c.tlb_local_flush_all == 0
    assert c.tlb_remote_flush == 0


def test_unbatched_kernel_flushes_and_interrupts_per_page() -> None:
    params = Params()
    params = replace(params, cost=replace(params.cost, migrate_batch_pages=1))
    w = World(1 << 30, 4 << 30, params=params, seed=1)
    w.add_vm("vm", 2, 64 * MIB, 256 * MIB)
    pid = _spawn(w)
    vpns = _movable(w, pid, 100)
    w.move_pages("vm", pid, _addrs(w, pid, vpns), SLOW)
    c = w.vm("vm").counters
    assert c.tlb_local_flush_one == c.tlb_remote_flush == len(vpns)


@pytest.mark.parametrize(
    ("npages", "one", "full"),
    [(1, 1, 0), (33, 33, 0), (34, 0, 1), (65536, 0, 1)],
    ids=["one-page", "at-ceiling", "above-ceiling", "256-mib"],
)
def test_range_flush_is_per_page_up_to_the_ceiling(
    npages: int, one: int, full: int
) -> None:
    w = _world()
    pid = _spawn(w)
    vm = w.vm("vm")
    w._guest_flush_range(vm, w.process("vm", pid), npages)
    assert vm.counters.tlb_local_flush_one == one
    assert vm.counters.tlb_local_flush_all == full
    assert vm.counters.tlb_remote_flush == 1


def test_move_of_exited_process_raises() -> None:
    w = _world()
    pid = _spawn(w)
    w.kill("vm", pid)
    with pytest.raises(NoSuchProcessError):
        w.move_pages("vm", pid, np.array([0], np.uint64), SLOW)


def test_shrink_falls_short_when_guest_cannot_free_memory() -> None:
    w = _world(fast_mib=64, slow_mib=64)
    _spawn(w, npages=32768)  # fills both nodes exactly
    plugged = w.resize("vm", FAST, 32 * MIB)
    assert plugged == 64 * MIB
    assert w.vm("vm").requested[FAST] * PAGE_SIZE == 32 * MIB
    w.check_invariants()


def test_shrink_migrates_pages_out_of_unplugged_blocks() -> None:
    w = _world(fast_mib=64, slow_mib=256)
    pid = _spawn(w, npages=16384)  # fills the fast node
    plugged = w.resize("vm", FAST, 32 * MIB)
    assert plugged == 32 * MIB
    nodes = w.page_nodes("vm", pid, _addrs(w, pid, np.arange(16384)))
    assert np.count_nonzero(nodes == FAST) == 8192
    assert w.vm("vm").counters.remote_tlb_flush > 0
    w.check_invariants()


def test_an_unplug_that_stopped_short_is_tried_again_with_back_off() -> None:
    """Both nodes full: the unplug stops short. The guest's driver tries again
    50 s later, doubling to 300 s (Linux virtio_mem's retry timer); once the
    pages are gone it completes; a new request tries at once."""
    w = _world(fast_mib=64, slow_mib=64)
    pid = _spawn(w, npages=32768, accesses=1000)  # fills both nodes
    assert w.resize("vm", FAST, 32 * MIB) == 64 * MIB
    vm = w.vm("vm")
    w.clock.advance(49.0)
    assert vm.plugged[FAST] * PAGE_SIZE == 64 * MIB
    w.clock.advance(1.0)  # the first retry: still stuck, next in 100 s
    assert [op[0] for op in w.oplog[-1:]] == ["unplug_retry"]
    assert vm.unplug_retry_s[FAST] == 100.0
    w.kill("vm", pid)
    w.clock.advance(99.0)
    assert vm.plugged[FAST] * PAGE_SIZE == 64 * MIB
    w.clock.advance(1.0)
    assert vm.plugged[FAST] * PAGE_SIZE == 32 * MIB
    assert vm.unplug_retry_at[FAST] == float("inf")
    w.check_invariants()
    # no retry when nothing is pending; a request goes through at once
    n = len(w.oplog)
    w.clock.advance(600.0)
    assert len(w.oplog) == n
    assert w.resize("vm", FAST, 16 * MIB) == 16 * MIB


def test_pebs_samples_fall_inside_the_mapping_and_favour_the_hot_set() -> None:
    w = _world()
    pid = _spawn(w, npages=32768, accesses=10**8)
    w.start_sampling("vm", "pebs", [pid], period=97, ring_pages=4096)
    w.clock.advance(0.01)
    _, addr, _, lost = w.drain_samples("vm")
    proc = w.process("vm", pid)
    assert len(addr) > 1000
    assert lost == 0
    vpn = (addr - np.uint64(proc.base_addr)) // np.uint64(PAGE_SIZE)
    assert np.all(vpn < proc.npages)
    hot = set(proc.workload.hot_set(3276).tolist())  # type: ignore[union-attr]
    share = np.mean([int(v) in hot for v in vpn[:2000]])
    assert share > 0.8


def test_small_ring_loses_records_and_counts_them() -> None:
    w = _world()
    pid = _spawn(w, accesses=10**8)
    w.start_sampling("vm", "pebs", [pid], period=10, ring_pages=1)
    w.clock.advance(0.01)
    _, addr, _, lost = w.drain_samples("vm")
    assert len(addr) == 4096 // 48 * 2
    assert lost > 0


def test_host_ept_scan_forces_remote_flushes_in_proportion() -> None:
    w = _world()
    _spawn(w, accesses=10**8)
    w.clock.advance(0.01)
    w.host_scan_ept("vm")  # arms A-bit tracking
    before = w.vm("vm").counters.remote_tlb_flush
    w.clock.advance(0.05)
    acc = w.host_scan_ept("vm")
    c = w.vm("vm").counters
    regions = len(np.unique(acc // w.params.cost.scan_flush_pages))
    assert c.remote_tlb_flush - before == regions > 0
    assert c.invept == c.remote_tlb_flush * 2


def test_host_migrate_costs_one_remote_flush_per_page() -> None:
    w = _world()
    _spawn(w, npages=32768)
    gfns = np.arange(10, dtype=np.int64)
    moved = w.host_migrate("vm", gfns, 1)
    assert moved == 10
    assert w.vm("vm").counters.remote_tlb_flush == 10
    assert np.all(w.host_tier_of_frames("vm")[:10] == SLOW)
    w.check_invariants()


def test_flushes_slow_the_vm_down() -> None:
    def elapsed(flush: bool) -> float:
        w = _world()
        pid = _spawn(w, accesses=4 * 10**6)
        while w.process("vm", pid).finished_at_s is None:
            w.clock.advance(0.001)
            if flush:
                w._host_remote_flush(w.vm("vm"), 20)
        return float(w.process("vm", pid).finished_at_s or 0.0)

    assert elapsed(True) > elapsed(False) * 1.05


def test_fast_placement_finishes_sooner() -> None:
    def elapsed(fast_mib: int) -> float:
        w = World(1 << 30, 4 << 30, seed=1)
        w.add_vm("vm", 2, fast_mib * MIB, 256 * MIB)
        pid = w.spawn("vm", make_workload("kv-zipf", 32768, seed=3), 4 * 10**6)
        while w.process("vm", pid).finished_at_s is None:
            w.clock.advance(0.01)
        return float(w.process("vm", pid).finished_at_s or 0.0)

    assert elapsed(130) < elapsed(16) * 0.8


def test_same_seed_same_result() -> None:
    def run() -> tuple[int, int, float]:
        w = _world(seed=5)
        pid = _spawn(w, accesses=3 * 10**6)
        w.start_sampling("vm", "pebs", [pid], period=101)
        w.clock.advance(0.05)
        c = w.vm("vm").counters
        return c.accesses, c.fast_accesses, w.vm("vm").vtime_s

    assert run() == run()


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_hot_set_takes_more_than_its_share_of_accesses(name: str) -> None:
    wl = make_workload(name, 16384, seed=2)
    hot = wl.hot_set(16384 // 10)
    counts = np.bincount(wl.generate(1 << 20), minlength=16384)
    assert counts[hot].sum() / (1 << 20) > 0.2


def test_phase_change_moves_the_hot_set() -> None:
    wl = make_workload("gups", 16384, seed=2)
    before = set(wl.hot_set(1638).tolist())
    wl.phase_change()
    after = set(wl.hot_set(1638).tolist())
    assert len(before & after) < len(before) // 2


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="memory profile 'dram2' unknown"):
        Params().with_profile("dram2")


def test_pebs_load_latency_threshold_samples_only_slow_accesses() -> None:
    w = _world()
    pid = _spawn(w, npages=32768, accesses=10**8)
    slow_cycles = int(w.params.memory.slow_latency_ns * 2.5)
    w.start_sampling(
        "vm", "pebs", [pid], period=50, ring_pages=4096, ldlat_cycles=slow_cycles
    )
    w.clock.advance(0.01)
    _, addr, weight, _ = w.drain_samples("vm")
    assert len(addr) > 100
    assert np.all(weight >= slow_cycles)
    nodes = w.page_nodes("vm", pid, addr & ~np.uint64(PAGE_SIZE - 1))
    assert np.all(nodes == SLOW)


@pytest.mark.parametrize("write_fraction", [0.0, 0.5], ids=["reads-only", "writes"])
def test_soft_dirty_scan_reports_written_pages_only(write_fraction: float) -> None:
    w = _world()
    wl = make_workload("gups", 32768, seed=3)
    wl.write_fraction = write_fraction
    pid = w.spawn("vm", wl, 10**7)
    w.start_sampling("vm", "soft-dirty", [pid])
    w.clock.advance(0.01)
    _, addr, _, _ = w.drain_samples("vm")
    proc = w.process("vm", pid)
    accessed = int(np.count_nonzero(proc.phase_counts[0]))
    if write_fraction == 0.0:
        assert len(addr) == 0
        assert w.vm("vm").counters.guest_mgmt_ns == 32768 * w.params.cost.pte_scan_ns
    else:
        assert 0 < len(addr) < accessed
        vpn = (addr.astype(np.int64) - proc.base_addr) // PAGE_SIZE
        assert np.all(proc.phase_counts[0][vpn] > 0)


def test_soft_dirty_write_faults_once_per_page_per_scan() -> None:
    w = _world()
    wl = make_workload("gups", 32768, seed=3)
    wl.write_fraction = 1.0
    pid = w.spawn("vm", wl, 10**7)
    w.start_sampling("vm", "soft-dirty", [pid])
    w.clock.advance(0.01)
    vm = w.vm("vm")
    faults_ns = vm.counters.guest_mgmt_ns
    _, addr, _, _ = w.drain_samples("vm")
    assert faults_ns == len(addr) * w.params.cost.wp_fault_ns


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3 * (1 << 16) + 500),
    npages=st.integers(1, 5000),
    entries=st.integers(1, 3000),
    seed=st.integers(0, 2**16),
)
def test_tlb_reach_is_the_top_entries_of_each_window(
    n: int, npages: int, entries: int, seed: int
) -> None:
    """Hits = per window of _TLB_WINDOW accesses (the last one takes the rest),
    the accesses to its ``entries`` most accessed pages; the same for any chunk."""
    rng = np.random.default_rng(seed)
    vpn = (rng.zipf(1.3, n) % npages).astype(np.int32)
    hits, distinct = _tlb_reach(vpn, npages, entries)
    w = _TLB_WINDOW
    nwin = max(1, n // w)
    edges = [i * w for i in range(nwin)] + [n]
    want_hits = want_distinct = 0
    for lo, hi in itertools.pairwise(edges):
        counts = np.sort(np.bincount(vpn[lo:hi]))[::-1]
        want_hits += int(counts[:entries].sum())
        want_distinct += int(np.count_nonzero(counts))
    assert hits == want_hits
    assert distinct == pytest.approx(want_distinct / nwin)
