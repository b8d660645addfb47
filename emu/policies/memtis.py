"""Memtis: guest PEBS sampling, a hotness histogram, a dynamic hot threshold.

Design notes and sources: docs/baselines.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emu.machine import FAST, SLOW, EmuProcess, EmuVm, World
from emu.policies.mechanisms import exchange, guest_nodes
from emu.policies.pebs import PebsPolicy
from hypertier_common.arrays import F64, I64

__all__ = ["MemtisPolicy"]


@dataclass(eq=False)
class MemtisPolicy(PebsPolicy):
    """Memtis: PEBS, a page-access histogram and a dynamic hot threshold.

    Source: Lee et al., "MEMTIS: Efficient Memory Tiering with Dynamic Page
    Classification and Page Size Determination", SOSP 2023. ksampled adds PEBS
    samples to per-page counts and keeps a log2 histogram of them; the hot
    threshold is the lowest bin whose pages, with all hotter bins, still fit the
    fast node, and warm is one bin below. Every ``cooling_samples`` samples all
    counts halve (cooling). kmigrated promotes hot slow pages and demotes cold
    (below warm) fast pages to make room. The sample period adapts to keep
    sampling CPU under ``cpu_limit`` of the VM's vCPU time. (Memtis' huge-page
    split is not modelled: the emulator maps 4 KiB pages.)
    """

    name = "memtis"

    cooling_samples: int = 50_000
    cpu_limit: float = 0.03
    max_period: int = 64_000

    def __post_init__(self) -> None:
        super().__post_init__()
        self._since_cool: dict[str, int] = {}
        self.hot_bin: dict[str, int] = {}

    def _account(
        self, name: str, vm: EmuVm, vpn: I64, npages: int, epoch_s: float
    ) -> None:
        counts = self._counts[name]
        counts += np.bincount(vpn, minlength=npages)
        n = self._since_cool.get(name, 0) + len(vpn)
        while n >= self.cooling_samples:
            np.floor(counts / 2, out=counts)
            n -= self.cooling_samples
        self._since_cool[name] = n

    @staticmethod
    def hot_threshold_bin(counts: F64, capacity: int) -> int:
        """Lowest histogram bin whose pages and all hotter ones fit ``capacity``.

        Bin 0 holds unsampled pages, bin b >= 1 counts in [2**(b-1), 2**b).
        """
        bins = np.zeros(len(counts), np.int64)
        pos = counts >= 1
        bins[pos] = np.floor(np.log2(counts[pos])).astype(np.int64) + 1
        hist = np.bincount(bins)
        above = np.cumsum(hist[::-1])[::-1]  # pages in bins >= b
        fits = np.flatnonzero(above[1:] <= capacity) + 1
        return int(fits[0]) if len(fits) else len(hist)

    def _place(
        self, world: World, vm: EmuVm, proc: EmuProcess, counts: F64, budget: int
    ) -> None:
        cap = vm.plugged[FAST]
        hot = self.hot_threshold_bin(counts, cap)
        self.hot_bin[vm.name] = hot
        bins = np.zeros(len(counts), np.int64)
        pos = counts >= 1
        bins[pos] = np.floor(np.log2(counts[pos])).astype(np.int64) + 1
        nodes = guest_nodes(vm, proc)
        promote = np.flatnonzero((nodes == SLOW) & (bins >= hot))
        promote = promote[np.argsort(-counts[promote], kind="stable")]
        # cold: below the warm bin (hot - 1); never-sampled pages are always cold
        demote = np.flatnonzero((nodes == FAST) & (bins < max(1, hot - 1)))
        demote = demote[np.argsort(counts[demote], kind="stable")]
        exchange(world, vm, proc, promote, demote, budget, 0)

    def _retune(
        self, world: World, name: str, vm: EmuVm, pid: int, n: int, epoch_s: float
    ) -> None:
        used = n * world.params.cost.pebs_sample_ns * 1e-9
        share = used / max(1e-12, epoch_s * vm.vcpus)
        period = self._period[name]
        if share > self.cpu_limit and period < self.max_period:
            period *= 2
        elif share < self.cpu_limit / 4 and period > self.period:
            period //= 2
        else:
            return
        self._period[name] = period
        world.start_sampling(
            name, "pebs", [pid], period=period, ring_pages=self.ring_pages
        )
