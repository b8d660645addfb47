"""The interface every placement policy compared on the emulator implements.

A policy is attached to a World with the VMs it manages, then ticked once per
epoch after the world has run for ``epoch_s`` of virtual time. Policies act only
through World operations (and the emu backends), so tracking and migration
costs are charged where the real system would pay them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from emu.machine import EmuProcess, EmuVm, World
from emu.workloads import Workload

__all__ = [
    "LIAR_VARIANTS",
    "ORACLE_NAMES",
    "POLICY_NAMES",
    "TENANT_POLICY_NAMES",
    "VARIANT_NAMES",
    "Policy",
    "PolicyBase",
    "VmSpec",
]

# Policy names, used everywhere (CLI, report.json's "policy", plots).
POLICY_NAMES = (
    "none",
    "all-fast",
    "tpp-host",
    "tpp-guest",
    "vtmm",
    "memtis",
    "hemem",
    "hypertier",
)
# The best static placement (emu.policies.oracle): yardsticks, not in the
# default matrix.
ORACLE_NAMES = ("oracle", "oracle-phase")
# Policies that exist only in a multi-tenant scenario (emu.evaluation.tenants):
# they need its liar or its host size. The liar variants: a plausible lie, an
# implausible one, a lie switched on and off (emu.backends.liar).
LIAR_VARIANTS = ("hypertier-liar", "hypertier-liar-huge", "hypertier-liar-flap")
VARIANT_NAMES = (*LIAR_VARIANTS, "balloon")
# What the multi-tenant scenarios compare.
TENANT_POLICY_NAMES = ("none", "all-fast", "hypertier", *VARIANT_NAMES)


@dataclass(frozen=True)
class VmSpec:
    """One VM of a scenario: its workload and memory split."""

    name: str
    # a workload name, "trace:FILE" or an instance (emu.workloads.make_workload)
    workload: str | Workload
    npages: int  # workload footprint in 4 KiB pages (a trace has its own)
    fast_bytes: int  # fast-tier allotment at start
    slow_bytes: int  # slow-tier allotment at start
    vcpus: int = 2
    total_accesses: int = 50_000_000
    qos_class: str = "silver"
    seed: int = 0
    phase_change_at_s: float | None = None
    fast_max_bytes: int | None = None  # virtio-mem device size (default: fast_bytes)
    slow_max_bytes: int | None = None
    # host-agent reservation of the fast tier (default: half of fast_bytes)
    fast_reservation_bytes: int | None = None
    # keyword arguments of the workload's constructor, e.g. (("hot_fraction", 0.5),)
    workload_options: tuple[tuple[str, float], ...] = ()
    # where a trace workload's pages sit in its mapping (emu.workloads.trace.LAYOUTS)
    trace_layout: str = "touch"


class Policy(Protocol):
    """A tiered-memory management design running on the emulator."""

    name: str

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        """Change the VM set-up before the world is built (all-fast gives all DRAM)."""
        ...

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        """Start managing; ``pids`` maps each VM to its workload's pid."""
        ...

    def tick(self, world: World, epoch_s: float) -> None:
        """One management epoch, after the world ran ``epoch_s`` virtual seconds."""
        ...

    def close(self) -> None: ...


@dataclass(eq=False)
class PolicyBase:
    """What most designs share: the VMs are set up as the scenario says
    (:meth:`adjust` keeps the specs), :meth:`attach` records each VM's workload
    pid, and :meth:`_running` visits the VMs whose workload still runs.

    A design is a dataclass: its fields are its options (keyword arguments of
    :func:`emu.policies.make_policy`), and ``__post_init__`` sets up its state.
    """

    name = "base"

    def __post_init__(self) -> None:
        self._pids: dict[str, int] = {}

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        del world
        self._pids = dict(pids)

    def _running(self, world: World) -> Iterator[tuple[str, int, EmuVm, EmuProcess]]:
        """(name, pid, vm, process) of each managed VM whose workload runs."""
        for name, pid in self._pids.items():
            if name not in world.vms or pid not in world.vm(name).procs:
                continue
            vm = world.vm(name)
            yield name, pid, vm, vm.procs[pid]
