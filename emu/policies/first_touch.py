"""The limit cases: first touch (``none``, Linux's default) and ``all-fast``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from emu.machine import PAGE_SIZE, World
from emu.policies.base import PolicyBase, VmSpec

__all__ = ["AllFastPolicy", "NonePolicy"]


# ------------------------------------------------------------- limit cases
class NonePolicy(PolicyBase):
    """No management: first-touch placement (Linux default), nothing ever moves."""

    name = "none"

    def tick(self, world: World, epoch_s: float) -> None:
        del world, epoch_s

    def close(self) -> None:
        pass


class AllFastPolicy(NonePolicy):
    """The limit: each VM gets its whole footprint (and its slow share) as DRAM."""

    name = "all-fast"

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return [
            replace(
                s, fast_bytes=max(s.fast_bytes + s.slow_bytes, s.npages * PAGE_SIZE)
            )
            for s in specs
        ]
