"""Run one scenario (a set of VMs with workloads) under one policy on a World.

The runner builds the world from :class:`~emu.policies.VmSpec` s (after the policy's
``adjust``), spawns each workload, then alternates ``epoch_s`` of virtual time
with one policy tick until every workload finished (or ``max_s``). It returns one
row per VM with the evaluation's metrics plus per-epoch time series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from emu.machine import FAST, PAGE_SIZE, World
from emu.machine.params import Params
from emu.policies import Policy, VmSpec
from emu.policies.oracle import METRIC_FIELDS, oracle_metrics, phase_oracle_hits

__all__ = [
    "COST_FIELDS",
    "ORACLE_FIELDS",
    "ROW_FIELDS",
    "RunResult",
    "build_world",
    "default_scenario",
    "run_scenario",
]

# What a VM's run cost: TLB flushes by kind, pages moved, management CPU.
COST_FIELDS = (
    "tlb_flush",
    "remote_tlb_flush",
    "tlb_local_flush_one",
    "tlb_local_flush_all",
    "tlb_remote_flush",
    "pages_moved",
    "mgmt_cpu_s",
)
# How a VM's run compares with the oracle (emu.policies.oracle), and how fast
# it converged.
ORACLE_FIELDS = (
    "oracle_hit",
    "hit_vs_oracle",
    "hit_ss",
    "ss_vs_oracle",
    "maccess_s_ss",
    "t90_s",
    "t90_change_s",
)
ROW_FIELDS = (
    "vm",
    "workload",
    "policy",
    "elapsed_s",
    "fast_hit_ratio",
    *COST_FIELDS,
    *ORACLE_FIELDS,
    "changes_unconverged",
    "t90_phase_s",
)

Progress = Callable[[str, float, float], None]  # (policy, t_s, fraction done)


@dataclass
class RunResult:
    """The outcome of one scenario under one policy."""

    policy: str
    rows: list[dict[str, object]]
    series: dict[str, dict[str, list[float]]]
    wall_s: float
    virtual_s: float
    accesses: int = 0


def default_scenario(scale: float = 1.0) -> list[VmSpec]:
    """The embedded default: four VMs, mixed workloads, fast tier = 1/4 footprint."""
    npages = int(98_304 * scale)  # 384 MiB footprint per VM at scale 1
    accesses = int(60_000_000 * scale)
    fast = npages * PAGE_SIZE // 4
    slow = npages * PAGE_SIZE
    mix = [
        ("vm1", "gups", "gold"),
        ("vm2", "kv-zipf", "silver"),
        ("vm3", "btree", "silver"),
        ("vm4", "pagerank", "bronze"),
    ]
    return [
        VmSpec(
            name,
            wl,
            npages,
            fast,
            slow,
            2,
            accesses,
            cls,
            seed=i + 1,
            fast_max_bytes=2 * fast,
        )
        for i, (name, wl, cls) in enumerate(mix)
    ]


def build_world(
    specs: Sequence[VmSpec],
    params: Params,
    seed: int,
    host_fast_bytes: int | None = None,
    host_slow_bytes: int | None = None,
) -> tuple[World, dict[str, int]]:
    """A World sized for ``specs``; VMs start and touch their memory in order.

    The host's fast node holds ``host_fast_bytes`` (default: the sum of the fast
    allotments, so every VM's fast node is backed by fast memory), its slow node
    ``host_slow_bytes`` (default: twice the sum of the slow allotments).
    """
    from emu.workloads import make_workload
    from emu.workloads.trace import TraceWorkload

    # VM nodes are whole virtio-mem blocks; the host holds exactly what they plug.
    blk = params.block_bytes
    host_fast = sum(-(-s.fast_bytes // blk) * blk for s in specs)
    if host_fast_bytes is not None:
        host_fast = host_fast_bytes
    host_slow = 2 * sum(-(-s.slow_bytes // blk) * blk for s in specs)
    if host_slow_bytes is not None:
        host_slow = host_slow_bytes
    world = World(host_fast, host_slow, params=params, seed=seed)
    pids: dict[str, int] = {}
    for s in specs:
        world.add_vm(
            s.name,
            s.vcpus,
            s.fast_bytes,
            s.slow_bytes,
            s.fast_max_bytes,
            s.slow_max_bytes,
        )
        wl = make_workload(
            s.workload, s.npages, seed=seed * 1000 + s.seed, **dict(s.workload_options)
        )
        if isinstance(wl, TraceWorkload) and isinstance(s.workload, str):
            wl = wl.laid_out(s.trace_layout)
        pids[s.name] = world.spawn(s.name, wl, s.total_accesses, prefault=wl.prefault)
    return world, pids


def run_scenario(
    specs: Sequence[VmSpec],
    policy: Policy,
    *,
    epoch_s: float = 0.05,
    max_s: float = 60.0,
    params: Params | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    host_fast_bytes: int | None = None,
    host_slow_bytes: int | None = None,
) -> RunResult:
    """Run ``specs`` under ``policy``; see the module docstring.

    ``host_fast_bytes`` and ``host_slow_bytes`` fix the host's memory (see
    :func:`build_world`).
    Rows carry the oracle yardsticks (:func:`emu.policies.oracle.oracle_metrics`).
    Series per VM and epoch: ``fast_hit_ratio``, ``accesses``, ``phase``,
    ``oracle_hit`` (its phase's best static placement, in hindsight),
    ``placement``,
    ``fast_plugged_bytes`` (its fast node's plugged size: the host's allotment)
    and ``fast_host_bytes`` (host fast memory backing its frames).
    """
    wall0 = time.perf_counter()
    specs = list(policy.adjust(specs))
    world, pids = build_world(
        specs, params or Params(), seed, host_fast_bytes, host_slow_bytes
    )
    by_name = {s.name: s for s in specs}
    fast_at_start = {n: world.vm(n).plugged[FAST] for n in pids}
    policy.attach(world, pids)
    series: dict[str, dict[str, list[float]]] = {
        s.name: {
            "t_s": [],
            "fast_hit_ratio": [],
            "placement": [],
            "fast_plugged_bytes": [],
            "fast_host_bytes": [],
            "accesses": [],
            "phase": [],
        }
        for s in specs
    }
    host_fast_node = next(n.node for n in world.host_nodes if n.tier == FAST)
    last = {s.name: (0, 0) for s in specs}
    # per (vm, phase): expected access share per page, and its sorted cumsum
    rate_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    changed: set[str] = set()
    total = sum(s.total_accesses for s in specs)
    t = 0.0
    try:
        while t < max_s:
            world.clock.advance(epoch_s)
            t += epoch_s
            policy.tick(world, epoch_s)
            done = 0
            for name, pid in pids.items():
                vm = world.vm(name)
                proc = vm.procs.get(pid)
                spec = by_name[name]
                if proc is None:
                    continue
                done += proc.done_accesses
                phase = proc.workload.phase if proc.workload is not None else 0
                if (
                    spec.phase_change_at_s is not None
                    and name not in changed
                    and vm.vtime_s >= spec.phase_change_at_s
                    and proc.workload is not None
                ):
                    proc.workload.phase_change()
                    changed.add(name)
                c = vm.counters
                a0, f0 = last[name]
                da, df = c.accesses - a0, c.fast_accesses - f0
                last[name] = (c.accesses, c.fast_accesses)
                if proc.finished_at_s is not None and da == 0:
                    continue
                wl = proc.workload
                assert wl is not None
                key = (name, wl.phase)
                if key not in rate_cache:
                    rates = wl.rates()
                    rate_cache[key] = (rates, np.cumsum(np.sort(rates)[::-1]))
                rates, best = rate_cache[key]
                on_fast = world.page_tiers(name, pid) == FAST
                k = int(np.count_nonzero(on_fast))
                ser = series[name]
                ser["t_s"].append(round(t, 6))
                ser["fast_hit_ratio"].append(df / da if da else 0.0)
                ser["accesses"].append(da)
                ser["phase"].append(phase)
                # share of the best achievable fast-tier hit ratio with k pages
                optimum = float(best[k - 1]) if k else 0.0
                got = float(rates[on_fast].sum())
                ser["placement"].append(got / optimum if optimum > 0 else 1.0)
                ser["fast_plugged_bytes"].append(vm.plugged[FAST] * PAGE_SIZE)
                ser["fast_host_bytes"].append(
                    int(np.count_nonzero(vm.f.host == host_fast_node)) * PAGE_SIZE
                )
            if progress is not None:
                progress(policy.name, t, done / total if total else 1.0)
            if all(
                p not in world.vm(n).procs
                or world.vm(n).procs[p].finished_at_s is not None
                for n, p in pids.items()
            ):
                break
    finally:
        policy.close()
    world.check_invariants()
    rows: list[dict[str, object]] = []
    accesses = 0
    for name, pid in pids.items():
        vm = world.vm(name)
        c = vm.counters
        proc = vm.procs.get(pid)
        finished = proc.finished_at_s if proc is not None else None
        accesses += c.accesses
        spec_wl = by_name[name].workload
        yardsticks: dict[str, object] = dict.fromkeys(METRIC_FIELDS)
        if proc is not None:
            ser = series[name]
            yardsticks = oracle_metrics(
                proc, fast_at_start[name], vm.fast_hit_ratio(), ser
            )
            by_phase = phase_oracle_hits(proc, fast_at_start[name])
            ser["oracle_hit"] = [by_phase.get(int(p), 0.0) for p in ser["phase"]]
        rows.append(
            {
                "vm": name,
                "workload": spec_wl if isinstance(spec_wl, str) else spec_wl.name,
                "policy": policy.name,
                "elapsed_s": round(finished, 6) if finished is not None else None,
                "fast_hit_ratio": round(vm.fast_hit_ratio(), 6),
                "tlb_flush": c.tlb_flush,
                "remote_tlb_flush": c.remote_tlb_flush,
                "tlb_local_flush_one": c.tlb_local_flush_one,
                "tlb_local_flush_all": c.tlb_local_flush_all,
                "tlb_remote_flush": c.tlb_remote_flush,
                "pages_moved": c.guest_pages_moved
                + c.host_pages_moved
                + c.unplug_pages_moved,
                "mgmt_cpu_s": round((c.guest_mgmt_ns + c.host_mgmt_ns) * 1e-9, 6),
                "invept": c.invept,
                "fast_bytes_end": vm.plugged[FAST] * PAGE_SIZE,
                "finished": finished is not None,
                **yardsticks,
            }
        )
    return RunResult(
        policy=policy.name,
        rows=rows,
        series=series,
        wall_s=time.perf_counter() - wall0,
        virtual_s=t,
        accesses=accesses,
    )
