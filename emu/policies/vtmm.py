"""vTMM: host-side page tracking with per-VM fast-memory shares.

Design notes and sources: docs/baselines.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emu.machine import FAST, PAGE_SIZE, SLOW, EmuProcess, EmuVm, World
from emu.policies.base import PolicyBase
from emu.policies.mechanisms import (
    DEFAULT_MIGRATE_PAGES_PER_S,
    epoch_budget,
    exchange,
    free_fast,
    guest_nodes,
)
from hypertier_common.arrays import F64, I64

__all__ = ["VtmmPolicy", "split_pool"]


# --------------------------------------------------------------------- vTMM
def split_pool(pool: int, floor: F64, weight: F64, cap: I64) -> I64:
    """Split ``pool`` whole units (blocks) into shares: floors, then by weight.

    Each share is its floor plus a part of what the floors leave, in proportion
    to ``weight`` (equally if every weight is 0), never above ``cap``: what a
    capped share cannot take goes to the others (water-filling). Fractions are
    settled by largest remainder, so the shares sum to exactly
    ``min(pool, cap.sum())``; floors that do not fit are scaled down together.
    """
    cap_f = cap.astype(np.float64)
    total = min(pool, int(cap.sum()))
    base = np.minimum(floor, cap_f)
    if base.sum() > total:
        base = base * (total / base.sum())
    w = weight if weight.sum() > 0 else np.ones(len(weight))
    ideal = base.copy()
    free = np.ones(len(base), bool)
    while free.any():
        extra = total - ideal[~free].sum() - base[free].sum()
        wf = w[free] if w[free].sum() > 0 else np.ones(int(free.sum()))
        ideal[free] = base[free] + extra * wf / wf.sum()
        over = free & (ideal > cap_f)
        if not over.any():
            break
        ideal[over] = cap_f[over]
        free &= ~over
    shares = np.minimum(np.floor(ideal), cap_f).astype(np.int64)
    short = total - int(shares.sum())
    while short > 0:  # largest remainders first, among shares below their cap
        order = np.argsort(shares - ideal, kind="stable")
        order = order[shares[order] < cap[order]][:short]
        shares[order] += 1
        short -= len(order)
    return shares


@dataclass(eq=False)
class VtmmPolicy(PolicyBase):
    """vTMM: PML tracking, multi-level queues, temperature sorting, a fast pool.

    Source: Sha et al., "vTMM: Tiered Memory Management for Virtual Machines",
    EuroSys 2023. The hypervisor drains each VM's page-modification log every
    epoch (``pml_drain``: PML-full exits and the drain's remote flush are charged
    by the World). A multi-level queue gives each guest frame a temperature: seen
    in a drain, it climbs one level; unseen, it decays one. Frames are bucket-
    sorted by level; the hottest at ``hot_level`` or above (default: the upper
    half of the queues) that fit the VM's fast node form its target set, and the
    guest side moves the difference with ``move_pages``, exchanging a fast page
    only for a strictly hotter one. Every ``pool_period_s`` the fast memory of
    all VMs is repartitioned in proportion to each VM's warm-set size
    (virtio-mem ``resize``), shrinking donors before growing receivers, within
    each VM's maximum. The pool is the fast memory the VMs started with, split in
    whole blocks by :func:`split_pool`, so repartitions never shrink it; with no
    warm frame anywhere the split stays as it is.
    """

    name = "vtmm"

    levels: int = 8
    hot_level: int | None = None
    migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S
    pool_period_s: float = 0.1
    min_share: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        self._hot_level = self.levels // 2 if self.hot_level is None else self.hot_level
        self._level: dict[str, npt.NDArray[np.int8]] = {}
        self._initial_fast: dict[str, int] = {}
        self._since_pool_s = 0.0

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        super().attach(world, pids)
        for name in pids:
            vm = world.vm(name)
            world.pml_drain(name)  # arms PML logging
            self._level[name] = np.zeros(vm.nframes, np.int8)
            self._initial_fast[name] = vm.plugged[FAST]

    def tick(self, world: World, epoch_s: float) -> None:
        budget = epoch_budget(self.migrate_pages_per_s, epoch_s)
        for name, _, vm, proc in self._running(world):
            level = self._level[name]
            seen = np.zeros(vm.nframes, bool)
            seen[world.pml_drain(name)] = True
            up = seen & (level < self.levels - 1)
            down = ~seen & (level > 0)
            level[up] += 1
            level[down] -= 1
            self._migrate(world, vm, proc, level, budget)
        self._since_pool_s += epoch_s
        if self._since_pool_s + 1e-12 >= self.pool_period_s:
            self._since_pool_s = 0.0
            self._repartition(world)

    def _migrate(
        self,
        world: World,
        vm: EmuVm,
        proc: EmuProcess,
        level: npt.NDArray[np.int8],
        budget: int,
    ) -> None:
        # temperature of each vpn through the guest's reverse map
        mapped = proc.pt >= 0
        temp = np.zeros(proc.npages, np.int64)
        temp[mapped] = level[proc.pt[mapped]]
        nodes = guest_nodes(vm, proc)
        # bucket sort: hottest level first, then by address (stable)
        order = np.argsort(-temp, kind="stable")
        order = order[temp[order] >= self._hot_level]
        target = order[: vm.plugged[FAST]]
        in_target = np.zeros(proc.npages, bool)
        in_target[target] = True
        promote = target[nodes[target] == SLOW]
        demote = np.flatnonzero((nodes == FAST) & ~in_target)
        demote = demote[np.argsort(temp[demote], kind="stable")]
        # exchange only strictly hotter for colder (no churn among equals)
        free = max(0, free_fast(vm))
        rest = promote[free:]
        m = min(len(rest), len(demote))
        hotter = temp[rest[:m]] > temp[demote[:m]]
        swaps = int(np.argmin(hotter)) if not hotter.all() else m
        exchange(world, vm, proc, promote[: free + swaps], demote[:swaps], budget, 0)

    def _repartition(self, world: World) -> None:
        names = [n for n in self._pids if n in world.vms]
        if len(names) < 2:
            return
        blk = world.params.block_bytes // PAGE_SIZE
        warm = np.array(
            [np.count_nonzero(self._level[n] > 0) for n in names], np.float64
        )
        if not warm.any():
            return  # nothing to go by: keep the split
        # The VMs' own fast memory, not what is plugged now: a share that
        # rounded down or a shrink that stopped short must not leave the pool.
        pool = sum(self._initial_fast[n] for n in names) // blk
        floor = np.array([self._initial_fast[n] * self.min_share for n in names])
        cap = np.array([world.vm(n).node_max[FAST] // blk for n in names], np.int64)
        want = split_pool(pool, floor / blk, warm, cap) * blk
        cur = np.array([world.vm(n).plugged[FAST] for n in names], np.int64)
        if np.array_equal(want, cur):
            return
        for i in np.flatnonzero(want < cur):  # donors first: frees host DRAM
            world.resize(names[i], FAST, int(want[i]) * PAGE_SIZE)
        fast = world.host_nodes[FAST]
        for i in np.flatnonzero(want > cur):
            room = max(0, fast.capacity_pages - fast.used_pages)
            grow = min(int(want[i] - cur[i]), room // blk * blk)
            if grow > 0:
                world.resize(names[i], FAST, (int(cur[i]) + grow) * PAGE_SIZE)

    def close(self) -> None:
        self._level.clear()
