"""The HyperTier emulator: an in-process machine implementing both backends.

``World`` (emu.world) holds host NUMA tiers, VMs with a fast and a CPU-less slow
guest node, processes with page tables and EPT, TLB-flush accounting and the
tracking sources; ``EmuGuestBackend`` (emu.guest) and ``EmuHostBackend``
(emu.host) are views onto it; ``FakeClock`` (emu.clock) drives it.
"""

from emu.clock import FakeClock
from emu.params import PROFILES, Params
from emu.world import World

__all__ = ["PROFILES", "FakeClock", "Params", "World"]
