"""The HyperTier emulator: an in-process machine implementing both backends.

Layers, each a subpackage that imports only the ones listed before it:

- ``emu.workloads``: access generators (synthetic workloads, recorded traces);
- ``emu.machine``: the machine (:class:`World`: topology, frames, page tables,
  cost model, tracking sources, invariants; :class:`Params`);
- ``emu.backends``: agent_guest's and agent_host's backends as views of a World;
- ``emu.policies``: the placement designs compared (baselines, oracle,
  hypertier's adapter running the real agents);
- ``emu.evaluation``: scenarios, the runner, reports, plots and the
  ``hypertier`` CLI.

``emu.clock.FakeClock`` (virtual time) is used by all of them and by the agents'
tests. docs/architecture.md has the picture.
"""

from emu.clock import FakeClock
from emu.machine import PROFILES, Params, World

__all__ = ["PROFILES", "FakeClock", "Params", "World"]
