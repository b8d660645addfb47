"""HeMem: guest PEBS sampling with fixed hot and cold thresholds.

Design notes and sources: docs/baselines.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emu.machine import FAST, SLOW, EmuProcess, EmuVm, World
from emu.policies.mechanisms import exchange, guest_nodes
from emu.policies.pebs import PebsPolicy
from hypertier_common.arrays import F64, I64

__all__ = ["HememPolicy"]


@dataclass(eq=False)
class HememPolicy(PebsPolicy):
    """HeMem: PEBS with fixed hot thresholds and threshold-triggered cooling.

    Source: Raybuck et al., "HeMem: Scalable Tiered Memory Management for Big
    Data Applications and Real NVM", SOSP 2021. Each PEBS sample counts one
    access to its page; a page is hot at ``hot_threshold`` (HeMem's
    HOT_READ_THRESHOLD = 8; the emulator's samples do not tell loads from
    stores, so the write threshold is not used). Whenever a page reaches
    ``cooling_threshold`` (COOLING_THRESHOLD = 18) every count halves. The
    policy thread promotes hot slow pages and, when the fast node is full,
    demotes cold (not hot) fast pages. Thresholds do not adapt to the sample
    rate or the fast-tier size; that is the design.
    """

    name = "hemem"

    hot_threshold: int = 8
    cooling_threshold: int = 18
    batch_samples: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        self.coolings = 0

    def _account(
        self, name: str, vm: EmuVm, vpn: I64, npages: int, epoch_s: float
    ) -> None:
        counts = self._counts[name]
        # HeMem handles samples one by one; batches small enough that a page
        # crosses the cooling threshold at most about once keep that behaviour
        for start in range(0, len(vpn), self.batch_samples):
            counts += np.bincount(
                vpn[start : start + self.batch_samples], minlength=npages
            )
            if counts.max() >= self.cooling_threshold:
                np.floor(counts / 2, out=counts)
                self.coolings += 1

    def _place(
        self, world: World, vm: EmuVm, proc: EmuProcess, counts: F64, budget: int
    ) -> None:
        nodes = guest_nodes(vm, proc)
        hot = counts >= self.hot_threshold
        promote = np.flatnonzero((nodes == SLOW) & hot)
        promote = promote[np.argsort(-counts[promote], kind="stable")]
        demote = np.flatnonzero((nodes == FAST) & ~hot)
        demote = demote[np.argsort(counts[demote], kind="stable")]
        exchange(world, vm, proc, promote, demote, budget, 0)
