"""The host backend Protocol, its value types and the backend registry.

Everything agent_host needs from libvirt/QEMU goes through :class:`HostBackend`;
the real implementation is ``agent_host.libvirt_backend`` (libvirt-python) and the
emulated one is ``emu.backends.host``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hypertier_common.registry import Registry

__all__ = [
    "BACKENDS",
    "Allotment",
    "DomainEvent",
    "DomainInfo",
    "DomainStats",
    "EventKind",
    "HostBackend",
    "HostCapability",
    "HostNode",
    "Tier",
]


class Tier(enum.Enum):
    """A memory tier: FAST (DRAM) or SLOW (CXL.mem, PMEM)."""

    FAST = "fast"
    SLOW = "slow"


class HostCapability(enum.Enum):
    VIRTIO_MEM_RESIZE = "virtio-mem-resize"
    BALLOON = "balloon"
    KVM_STATS = "kvm-stats"
    GUEST_CHANNEL = "guest-channel"
    METADATA = "metadata"
    EVENTS = "events"


@dataclass(frozen=True)
class HostNode:
    """One host NUMA node and the tier it serves."""

    node: int
    tier: Tier
    total_bytes: int
    free_bytes: int
    has_cpus: bool


@dataclass(frozen=True)
class Allotment:
    """One resizable per-tier allotment of a VM (a virtio-mem device).

    ``requested_bytes`` is what the host asked for; ``current_bytes`` what the
    guest has plugged, which lags or falls short when the guest cannot comply.
    ``boot_bytes`` is the guest node's fixed memory beside the device (the NUMA
    cell's ``memory`` in the domain XML): the host knows it without asking the
    guest, so guest reports are checked against ``boot_bytes + current_bytes``.
    """

    tier: Tier
    guest_node: int
    requested_bytes: int
    current_bytes: int
    max_bytes: int
    block_bytes: int
    host_nodes: tuple[int, ...] = ()
    boot_bytes: int = 0


@dataclass(frozen=True)
class DomainInfo:
    """A running VM as the host agent sees it."""

    vm: str
    uuid: str
    vcpus: int
    active: bool
    allotments: tuple[Allotment, ...]

    def allotment(self, tier: Tier) -> Allotment | None:
        return next((a for a in self.allotments if a.tier is tier), None)


@dataclass(frozen=True)
class DomainStats:
    """Per-VM counters; a field is None when this host does not expose it."""

    vm: str
    remote_tlb_flush: int | None = None
    tlb_flush: int | None = None
    exits: int | None = None
    cpu_time_s: float | None = None
    balloon_current_bytes: int | None = None


class EventKind(enum.Enum):
    STARTED = "started"
    STOPPED = "stopped"
    MIGRATED = "migrated"
    DEFINED = "defined"
    UNDEFINED = "undefined"


@dataclass(frozen=True)
class DomainEvent:
    vm: str
    kind: EventKind


@runtime_checkable
class HostBackend(Protocol):
    """Everything agent_host needs from libvirt/QEMU. Nothing else touches them."""

    def capabilities(self) -> frozenset[HostCapability]: ...

    def host_nodes(self) -> Sequence[HostNode]:
        """Host NUMA nodes with their tier (CPU-less nodes are the slow tier)."""
        ...

    def domains(self) -> Sequence[DomainInfo]:
        """Active tiered VMs with their allotments."""
        ...

    def resize(self, vm: str, tier: Tier, size_bytes: int) -> None:
        """Request a new size for a VM's allotment of ``tier``.

        Asynchronous: ``current_bytes`` follows as the guest plugs or unplugs.
        Raises NoSuchDomain, BackendError, Unsupported.
        """
        ...

    def domain_stats(self, vm: str) -> DomainStats: ...

    def get_metadata(self, vm: str) -> str | None:
        """HyperTier's XML element from the domain <metadata>, or None."""
        ...

    def set_metadata(self, vm: str, xml: str) -> None: ...

    def channel_send(self, vm: str, line: bytes) -> None:
        """Send one wire-format line to the VM's guest agent."""
        ...

    def channel_recv(self, vm: str) -> bytes:
        """Bytes from the VM's guest agent since the last call (maybe partial lines)."""
        ...

    def channel_connection(self, vm: str) -> int:
        """Which connection to the VM's channel the backend holds (or last held).

        A counter that changes whenever the backend opens a new connection: a
        line the old connection left unfinished never continues in the new one.
        """
        ...

    def events(self) -> Sequence[DomainEvent]:
        """Lifecycle events since the last call."""
        ...

    def close(self) -> None: ...


BACKENDS: Registry[HostBackend] = Registry(
    {
        "libvirt": "agent_host.libvirt_backend:LibvirtHostBackend",
        "emu": "emu.backends.host:EmuHostBackend",
    }
)
