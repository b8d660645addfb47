"""The tier-unaware ablation: one balloon-style allotment per VM, no host agent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from emu.machine import World
from emu.policies.base import VmSpec

__all__ = ["BalloonPolicy"]


class BalloonPolicy:
    """The per-tier ablation's baseline: one tier-unaware allotment per VM (a
    classic balloon).

    The host sizes each VM's memory as a whole (here: the same total as the
    per-tier runs, held constant) but not its split between tiers: each guest's
    fast node is as large as its fast device, bound to the host's fast node with
    a preferred policy, so its frames are backed by fast memory on first touch
    while the host has any left and by slow memory after that, first come first
    served across VMs, whatever their class. The real guest agents still place
    pages inside each VM (they see a large fast node); no host agent runs.
    Give the run the host's real memory (``run_scenario(host_fast_bytes=,
    host_slow_bytes=)``): sized from the enlarged fast nodes it would be too big.
    """

    def __init__(self, name: str = "balloon") -> None:
        from emu.policies import make_policy

        self.name = name
        self._agents = make_policy("hypertier", column=name, host_agent=False)

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        out = []
        for s in specs:
            total = s.fast_bytes + s.slow_bytes
            fast = min(max(s.fast_max_bytes or 0, s.fast_bytes), total)
            out.append(replace(s, fast_bytes=fast, slow_bytes=total - fast))
        return self._agents.adjust(out)

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        self._agents.attach(world, pids)

    def tick(self, world: World, epoch_s: float) -> None:
        self._agents.tick(world, epoch_s)
        for vm in world.vms.values():
            vm.to_host.clear()  # no host agent listens on the port

    def close(self) -> None:
        self._agents.close()
