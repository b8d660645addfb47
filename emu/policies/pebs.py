"""The shared part of the guest PEBS designs (Memtis, HeMem)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from emu.machine import EmuProcess, EmuVm, World
from emu.policies.base import PolicyBase
from emu.policies.mechanisms import (
    DEFAULT_MIGRATE_PAGES_PER_S,
    DEFAULT_PEBS_PERIOD,
    epoch_budget,
    sample_vpns,
)
from hypertier_common.arrays import F64, I64

__all__ = ["PebsPolicy"]


# ---------------------------------------------------- PEBS-based designs
@dataclass(eq=False)
class PebsPolicy(PolicyBase):
    """Shared part of the guest PEBS designs: sampling, per-page counts, moves."""

    name = "pebs"

    period: int = DEFAULT_PEBS_PERIOD
    migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S
    ring_pages: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        self._counts: dict[str, F64] = {}
        self._period: dict[str, int] = {}

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        super().attach(world, pids)
        for name, pid in pids.items():
            proc = world.process(name, pid)
            self._counts[name] = np.zeros(proc.npages, np.float64)
            self._period[name] = self.period
            world.start_sampling(
                name, "pebs", [pid], period=self.period, ring_pages=self.ring_pages
            )

    def tick(self, world: World, epoch_s: float) -> None:
        budget = epoch_budget(self.migrate_pages_per_s, epoch_s)
        for name, pid, vm, proc in self._running(world):
            pids, addrs, _, _ = world.drain_samples(name, epoch_s)
            vpn = sample_vpns(proc, pids, addrs)
            self._account(name, vm, vpn, proc.npages, epoch_s)
            self._place(world, vm, proc, self._counts[name], budget)
            self._retune(world, name, vm, pid, len(vpn), epoch_s)

    def _account(
        self, name: str, vm: EmuVm, vpn: I64, npages: int, epoch_s: float
    ) -> None:
        raise NotImplementedError

    def _place(
        self, world: World, vm: EmuVm, proc: EmuProcess, counts: F64, budget: int
    ) -> None:
        raise NotImplementedError

    def _retune(
        self, world: World, name: str, vm: EmuVm, pid: int, n: int, epoch_s: float
    ) -> None:
        del world, name, vm, pid, n, epoch_s

    def close(self) -> None:
        self._counts.clear()
