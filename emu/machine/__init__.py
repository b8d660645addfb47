"""The emulated machine: topology, frames, page tables, cost model, tracking.

:class:`World` (emu.machine.world) is the machine; its public surface is listed
in its docstring. :class:`Params` (emu.machine.params) holds every hardware and
cost parameter with its source.
"""

from emu.machine.params import PROFILES, CostModel, MemoryProfile, Params, TlbModel
from emu.machine.state import (
    FAST,
    PAGE_SIZE,
    SLOW,
    EmuProcess,
    EmuVm,
    HostNodeState,
    InvariantError,
    NoSuchProcessError,
    NoSuchVmError,
    VmCounters,
)
from emu.machine.world import World

__all__ = [
    "FAST",
    "PAGE_SIZE",
    "PROFILES",
    "SLOW",
    "CostModel",
    "EmuProcess",
    "EmuVm",
    "HostNodeState",
    "InvariantError",
    "MemoryProfile",
    "NoSuchProcessError",
    "NoSuchVmError",
    "Params",
    "TlbModel",
    "VmCounters",
    "World",
]
