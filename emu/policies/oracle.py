"""The oracle: the best static placement, as a policy and as a yardstick.

``oracle`` puts the pages with the most accesses over the run on the fast node
before the run starts (from the workload's weights, or a trace's counts);
``oracle-phase`` does so again at each phase change. Both move pages at no cost
(:meth:`emu.machine.World.place_free`). :func:`oracle_metrics` computes, for any
run, the oracle's hit ratio in hindsight, hit/oracle, time to 90 % of the
oracle after start and after each phase change, and the steady-state hit ratio
(definitions: docs/emulator.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from emu.machine import FAST, EmuProcess, EmuVm, World
from emu.policies.base import PolicyBase
from hypertier_common.arrays import F64

__all__ = [
    "CONVERGED_FRACTION",
    "METRIC_FIELDS",
    "OraclePhasePolicy",
    "OraclePolicy",
    "oracle_metrics",
    "phase_oracle_hits",
    "top_k_share",
]

# "converged": an epoch's hit ratio reaches this fraction of the oracle's
CONVERGED_FRACTION = 0.9
# the steady-state window: the last half of a VM's run
STEADY_FROM = 0.5
METRIC_FIELDS = (
    "oracle_hit",
    "hit_vs_oracle",
    "oracle_phase_hit",
    "hit_ss",
    "ss_vs_oracle",
    "maccess_s_ss",
    "t90_s",
    "t90_phase_s",
    "t90_change_s",
    "changes_unconverged",
)


def top_k_share(counts: npt.NDArray[np.number], k: int) -> float:
    """Share of all accesses that the ``k`` most-accessed pages take."""
    total = float(counts.sum())
    if total <= 0 or k <= 0:
        return 0.0 if total > 0 else 1.0
    if k >= len(counts):
        return 1.0
    return float(np.partition(counts, len(counts) - k)[-k:].sum()) / total


def _fast_room(vm: EmuVm, proc: EmuProcess) -> int:
    """Fast pages available to ``proc``: the plugged node minus others' pages."""
    mine = proc.pt[proc.pt >= 0]
    own_fast = int(np.count_nonzero(vm.node_of_frame(mine) == FAST))
    return vm.plugged[FAST] - (vm.used_pages(FAST) - own_fast)


class OraclePolicy(PolicyBase):
    """Best static placement: the most-accessed pages of the run on the fast node.

    Placed once, before the first access, at no cost: the top pages by
    ``workload.expected_counts`` of the whole run (a trace: its exact counts
    over the replay; a synthetic workload: its weights, phase 0).
    """

    name = "oracle"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._phase: dict[str, int] = {}

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        super().attach(world, pids)
        for name, pid in pids.items():
            proc = world.process(name, pid)
            assert proc.workload is not None
            self._place(world, name, proc, self._counts(proc))
            self._phase[name] = proc.workload.phase

    def _counts(self, proc: EmuProcess) -> F64:
        assert proc.workload is not None
        left = max(1, proc.target_accesses - proc.done_accesses)
        return proc.workload.expected_counts(left)

    def _place(self, world: World, name: str, proc: EmuProcess, counts: F64) -> None:
        vm = world.vm(name)
        k = max(0, min(_fast_room(vm, proc), proc.npages))
        fast = np.zeros(proc.npages, bool)
        fast[np.argsort(-counts, kind="stable")[:k]] = True
        world.place_free(name, proc.pid, fast)

    def tick(self, world: World, epoch_s: float) -> None:
        del world, epoch_s

    def close(self) -> None:
        pass


class OraclePhasePolicy(OraclePolicy):
    """Per-phase oracle: the best static placement of each phase, re-placed at no
    cost at the first tick after the phase changes (so up to one epoch late)."""

    name = "oracle-phase"

    def _counts(self, proc: EmuProcess) -> F64:
        assert proc.workload is not None
        return proc.workload.rates()

    def tick(self, world: World, epoch_s: float) -> None:
        del epoch_s
        for name, pid in self._pids.items():
            proc = world.vm(name).procs.get(pid)
            if proc is None or proc.workload is None:
                continue
            if proc.workload.phase != self._phase.get(name):
                self._phase[name] = proc.workload.phase
                self._place(world, name, proc, proc.workload.rates())


def phase_oracle_hits(proc: EmuProcess, fast_pages: int) -> dict[int, float]:
    """Per phase, the hit ratio of that phase's best static placement."""
    k = min(fast_pages, proc.npages)
    return {p: top_k_share(c, k) for p, c in proc.phase_counts.items()}


def oracle_metrics(
    proc: EmuProcess,
    fast_pages: int,
    hit: float,
    series: Mapping[str, Sequence[float]],
) -> dict[str, object]:
    """The oracle yardsticks of one VM's run (see docs/emulator.md).

    ``fast_pages`` is the VM's fast node at start, ``hit`` its fast-tier hit
    ratio over the run; ``series`` its per-epoch ``t_s``, ``fast_hit_ratio``,
    ``accesses`` and ``phase``.
    """
    k = min(fast_pages, proc.npages)
    per_phase = proc.phase_counts
    if not per_phase:
        return dict.fromkeys(METRIC_FIELDS)
    total = np.sum(list(per_phase.values()), axis=0)
    n_all = float(total.sum())
    oracle = top_k_share(total, k)
    phase_hit = phase_oracle_hits(proc, fast_pages)
    oracle_phase = (
        sum(phase_hit[p] * float(c.sum()) for p, c in per_phase.items()) / n_all
        if n_all
        else 1.0
    )
    t = np.asarray(series["t_s"], np.float64)
    h = np.asarray(series["fast_hit_ratio"], np.float64)
    a = np.asarray(series["accesses"], np.float64)
    ph = np.asarray(series["phase"], np.int64)
    ss = t > (t[-1] * STEADY_FROM if len(t) else 0.0)
    hit_ss = float((h[ss] * a[ss]).sum() / a[ss].sum()) if a[ss].sum() > 0 else None
    # M accesses per emulated second over the steady window (epochs with accesses:
    # a VM that finished early stops counting)
    busy = np.flatnonzero(ss & (a > 0))
    span = float(t[busy[-1]] - t[busy[0] - 1]) if len(busy) and busy[0] > 0 else 0.0
    tput_ss = float(a[busy].sum()) / span * 1e-6 if span > 0 else None
    t90: float | None = None
    t90_phase: list[float | None] = []
    if len(t):
        starts = [0, *np.flatnonzero(ph[1:] != ph[:-1]).tolist()]
        starts = [s if i == 0 else s + 1 for i, s in enumerate(starts)]
        bounds = [*starts, len(t)]
        for i, (s, e) in enumerate(itertools.pairwise(bounds)):
            target = CONVERGED_FRACTION * phase_hit.get(int(ph[s]), oracle)
            ok = np.flatnonzero(h[s:e] >= target)
            t0 = float(t[s - 1]) if s > 0 else 0.0
            got = round(float(t[s + ok[0]]) - t0, 6) if len(ok) else None
            if i == 0:
                t90 = got
            else:
                t90_phase.append(got)
    done = [x for x in t90_phase if x is not None]
    return {
        "oracle_hit": round(oracle, 6),
        "hit_vs_oracle": round(hit / oracle, 4) if oracle > 0 else None,
        "oracle_phase_hit": round(oracle_phase, 6),
        "hit_ss": round(hit_ss, 6) if hit_ss is not None else None,
        "ss_vs_oracle": (
            round(hit_ss / oracle, 4) if hit_ss is not None and oracle > 0 else None
        ),
        "maccess_s_ss": round(tput_ss, 6) if tput_ss is not None else None,
        "t90_s": t90,
        "t90_phase_s": t90_phase,
        # the median time to 90 % after a phase change, over the changes that
        # converged before the next one; how many did not
        "t90_change_s": round(float(np.median(done)), 6) if done else None,
        "changes_unconverged": len(t90_phase) - len(done),
    }
