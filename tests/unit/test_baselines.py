"""The baseline policies do what their source designs do, through World operations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.evaluation.runner import build_world, run_scenario
from emu.machine import FAST, PAGE_SIZE, SLOW, World
from emu.machine.params import Params
from emu.policies import POLICY_NAMES, Policy, VmSpec, make_policy
from emu.policies.hemem import HememPolicy
from emu.policies.memtis import MemtisPolicy
from emu.policies.tpp import HostTppPolicy
from emu.policies.vtmm import VtmmPolicy, split_pool
from emu.workloads import make_workload

NPAGES = 16_384
# the designs implemented in emu.policies (hypertier runs the real agents)
BASELINES = tuple(n for n in POLICY_NAMES if n != "hypertier")
EPOCH_S = 0.01


def _specs(n: int = 1, accesses: int = 4_000_000, npages: int = NPAGES) -> list[VmSpec]:
    return [
        VmSpec(
            f"vm{i + 1}",
            "gups",
            npages,
            npages * PAGE_SIZE // 4,
            npages * PAGE_SIZE,
            2,
            accesses,
            seed=i + 1,
        )
        for i in range(n)
    ]


def _attach(policy: Policy, specs: Sequence[VmSpec]) -> tuple[World, dict[str, int]]:
    world, pids = build_world(list(policy.adjust(specs)), Params(), seed=1)
    policy.attach(world, pids)
    return world, pids


def _run(world: World, policy: Policy, ticks: int) -> None:
    for _ in range(ticks):
        world.clock.advance(EPOCH_S)
        policy.tick(world, EPOCH_S)
    world.check_invariants()


def _hot_on_fast(world: World, vm: str, pid: int) -> float:
    proc = world.process(vm, pid)
    assert proc.workload is not None
    hot = proc.workload.hot_set(proc.npages // 10)
    return float(np.mean(world.page_tiers(vm, pid)[hot] == FAST))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_registry_builds_each_baseline_under_its_name(name: str) -> None:
    assert make_policy(name).name == name


def test_unknown_policy_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_policy("tpp")


def test_all_fast_gives_each_vm_its_footprint_in_dram() -> None:
    (spec,) = make_policy("all-fast").adjust(_specs())
    assert spec.fast_bytes >= spec.npages * PAGE_SIZE


@pytest.mark.slow
def test_all_fast_is_never_slower_than_any_policy() -> None:
    specs = _specs(accesses=3_000_000)
    elapsed = {}
    for name in POLICY_NAMES:
        policy = make_policy(name)
        row = run_scenario(specs, policy, epoch_s=EPOCH_S, seed=1).rows[0]
        elapsed[name] = row["elapsed_s"]
    assert all(elapsed["all-fast"] <= e for e in elapsed.values()), elapsed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_same_seed_gives_the_same_rows(name: str) -> None:
    specs = _specs(n=2, accesses=1_500_000)
    a = run_scenario(specs, make_policy(name), epoch_s=EPOCH_S, seed=3)
    b = run_scenario(specs, make_policy(name), epoch_s=EPOCH_S, seed=3)
    assert a.rows == b.rows
    assert a.series == b.series


def test_host_tpp_scanning_alone_raises_remote_flushes_per_scan() -> None:
    per_scan = []
    for every in (1, 3):
        pol = HostTppPolicy(scan_period_s=every * EPOCH_S, migrate_pages_per_s=0)
        world, _ = _attach(pol, _specs())
        _run(world, pol, 12)
        c = world.vm("vm1").counters
        assert c.host_pages_moved == 0
        per_scan.append((c.remote_tlb_flush, pol.scans))
    (f1, s1), (f3, s3) = per_scan
    assert s1 == 3 * s3
    # every scan clears A bits over the whole working set: same flushes per scan
    assert f1 / s1 == pytest.approx(f3 / s3, rel=0.2)
    assert f1 > 2 * f3


def test_host_tpp_pays_a_remote_flush_per_migrated_page() -> None:
    pol = HostTppPolicy(scan_period_s=EPOCH_S)
    world, _ = _attach(pol, _specs())
    _run(world, pol, 6)
    c = world.vm("vm1").counters
    assert c.host_pages_moved > 0
    assert c.guest_pages_moved == 0
    assert c.remote_tlb_flush >= c.host_pages_moved
    assert c.invept == c.remote_tlb_flush * 2  # INVEPT on each of the 2 vCPUs


def test_host_tpp_keeps_host_fast_node_within_capacity() -> None:
    pol = HostTppPolicy(scan_period_s=EPOCH_S)
    world, _ = _attach(pol, _specs(n=2))
    _run(world, pol, 6)
    fast = world.host_nodes[FAST]
    assert fast.used_pages <= fast.capacity_pages


def test_guest_tpp_tracks_with_hinting_faults_and_moves_in_the_guest() -> None:
    pol = make_policy("tpp-guest")
    world, _ = _attach(pol, _specs())
    _run(world, pol, 20)
    c = world.vm("vm1").counters
    assert world.vm("vm1").sampling == "page-fault"
    assert c.tlb_local_flush_all > 0  # change_prot_numa range flushes
    assert c.guest_pages_moved > 0
    assert c.host_pages_moved == 0


def test_memtis_hot_threshold_is_the_lowest_bin_that_fits() -> None:
    # 10 pages with 40 samples (bin 6), 100 with 5 (bin 3), 1000 with 2 (bin 2),
    # 2000 with 1 (bin 1), the rest unsampled (bin 0)
    counts = np.zeros(5000)
    counts[:10], counts[10:110], counts[110:1110], counts[1110:3110] = 40, 5, 2, 1
    assert MemtisPolicy.hot_threshold_bin(counts, capacity=120) == 3
    assert MemtisPolicy.hot_threshold_bin(counts, capacity=50) == 4
    assert MemtisPolicy.hot_threshold_bin(counts, capacity=5000) == 1


def test_memtis_brings_the_hot_set_to_the_fast_node() -> None:
    pol = make_policy("memtis")
    world, pids = _attach(pol, _specs(accesses=20_000_000))
    before = _hot_on_fast(world, "vm1", pids["vm1"])
    _run(world, pol, 30)
    assert _hot_on_fast(world, "vm1", pids["vm1"]) > max(0.8, before)
    assert world.vm("vm1").counters.host_pages_moved == 0


def test_memtis_lengthens_its_sample_period_over_its_cpu_limit() -> None:
    pol = MemtisPolicy(period=10, cpu_limit=0.01)
    world, _ = _attach(pol, _specs())
    _run(world, pol, 3)
    assert world.vm("vm1").sample_period > 10


def _hemem_on_slow_page() -> tuple[HememPolicy, World, int, int]:
    pol = HememPolicy()
    world, pids = _attach(pol, _specs(accesses=1))
    pid = pids["vm1"]
    proc = world.process("vm1", pid)
    slow = np.flatnonzero(world.vm("vm1").node_of_frame(proc.pt) == SLOW)
    return pol, world, pid, int(slow[0])


@pytest.mark.parametrize(("samples", "moved"), [(7, False), (8, True)], ids=["7", "8"])
def test_hemem_promotes_at_its_fixed_threshold(samples: int, moved: bool) -> None:
    pol, world, pid, vpn = _hemem_on_slow_page()
    vm = world.vm("vm1")
    pol._account("vm1", vm, np.full(samples, vpn, np.int64), NPAGES, EPOCH_S)
    pol._place(world, vm, world.process("vm1", pid), pol._counts["vm1"], 1000)
    node = world.page_nodes(
        "vm1", pid, world.process("vm1", pid).addr_of(np.array([vpn]))
    )
    assert (node[0] == FAST) == moved


def test_hemem_halves_every_count_when_a_page_reaches_cooling() -> None:
    pol, world, _, vpn = _hemem_on_slow_page()
    pol._counts["vm1"][vpn + 1] = 6
    pol._account("vm1", world.vm("vm1"), np.full(18, vpn, np.int64), NPAGES, EPOCH_S)
    assert pol.coolings == 1
    assert pol._counts["vm1"][vpn] == 9
    assert pol._counts["vm1"][vpn + 1] == 3


def test_vtmm_tracks_with_pml_and_migrates_in_the_guest() -> None:
    pol = make_policy("vtmm")
    # a footprint large enough that not every page is dirtied every epoch (with
    # 16k pages PML saturates and every frame looks equally hot)
    world, pids = _attach(pol, _specs(accesses=20_000_000, npages=65_536))
    _run(world, pol, 30)
    c = world.vm("vm1").counters
    assert world.vm("vm1").track_pml
    assert c.vm_exits > 0  # PML-full exits
    assert c.guest_pages_moved > 0
    assert c.host_pages_moved == 0
    assert _hot_on_fast(world, "vm1", pids["vm1"]) > 0.5


def test_vtmm_pool_gives_fast_memory_to_the_vm_with_the_larger_warm_set() -> None:
    world = World(64 << 20, 1 << 30, seed=1)
    for name, wl in (("busy", "gups"), ("idle", "gups")):
        world.add_vm(name, 2, 16 << 20, 96 << 20, fast_max_bytes=48 << 20)
        workload = make_workload(wl, NPAGES, seed=1)
        world.spawn(name, workload, 50_000_000 if name == "busy" else 1)
    pids = {n: next(iter(world.vm(n).procs)) for n in ("busy", "idle")}
    pol = VtmmPolicy(pool_period_s=2 * EPOCH_S)
    pol.attach(world, pids)
    _run(world, pol, 4)
    assert world.vm("busy").plugged[FAST] > world.vm("idle").plugged[FAST]
    assert world.host_nodes[FAST].used_pages <= world.host_nodes[FAST].capacity_pages


def _fast_pool_mib(world: World, names: Sequence[str]) -> float:
    return sum(world.vm(n).plugged[FAST] for n in names) * PAGE_SIZE / (1 << 20)


def test_vtmm_pool_keeps_its_size_across_repartitions() -> None:
    # Four busy VMs: warm-set shares are not whole blocks, so each repartition
    # used to round every share down (432 -> 398 MiB in the 4-VM kv-zipf cell).
    specs = [
        replace(s, workload=w, fast_max_bytes=2 * s.fast_bytes)
        for s, w in zip(
            _specs(4, accesses=20_000_000),
            ("gups", "kv-zipf", "btree", "gups"),
            strict=True,
        )
    ]
    pol = VtmmPolicy(pool_period_s=2 * EPOCH_S)
    world, pids = _attach(pol, specs)
    start = _fast_pool_mib(world, list(pids))
    sizes = []
    for _ in range(10):
        _run(world, pol, 2)
        sizes.append(_fast_pool_mib(world, list(pids)))
    assert sizes == [start] * 10
    assert len({world.vm(n).plugged[FAST] for n in pids}) > 1  # it did repartition


def test_vtmm_pool_of_idle_vms_keeps_its_size() -> None:
    # No warm frames anywhere: the pool used to fall to the floors (512 -> 128 MiB).
    specs = [replace(s, fast_max_bytes=2 * s.fast_bytes) for s in _specs(2, 1)]
    pol = VtmmPolicy(pool_period_s=2 * EPOCH_S)
    world, pids = _attach(pol, specs)
    start = _fast_pool_mib(world, list(pids))
    _run(world, pol, 10)
    assert _fast_pool_mib(world, list(pids)) == start


@st.composite
def _pools(
    draw: st.DrawFn,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    n = draw(st.integers(1, 8))
    cap = np.array(draw(st.lists(st.integers(0, 500), min_size=n, max_size=n)))
    pool = draw(st.integers(0, int(cap.sum())))
    floor = np.array(
        [draw(st.floats(0, float(c), allow_nan=False)) for c in cap], np.float64
    )
    weight = np.array(
        draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)), np.float64
    )
    return pool, floor, weight, cap


@given(_pools())
def test_split_pool_conserves_the_pool_in_whole_non_negative_blocks(
    case: tuple[int, np.ndarray, np.ndarray, np.ndarray],  # type: ignore[type-arg]
) -> None:
    pool, floor, weight, cap = case
    shares = split_pool(pool, floor, weight, cap)
    assert shares.dtype == np.int64
    assert int(shares.sum()) == pool
    assert (shares >= 0).all()
    assert (shares <= cap).all()
    if floor.sum() <= pool:  # floors that fit are kept, to the block below
        assert (shares >= np.floor(floor)).all()


@given(_pools())
def test_split_pool_repeated_keeps_the_pool(
    case: tuple[int, np.ndarray, np.ndarray, np.ndarray],  # type: ignore[type-arg]
) -> None:
    # What a repartition every pool period does: the sum never drifts.
    pool, floor, weight, cap = case
    for k in range(5):
        shares = split_pool(pool, floor, np.roll(weight, k), cap)
        assert int(shares.sum()) == pool
