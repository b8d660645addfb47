"""The guest backend Protocol, its value types and the backend registry.

Everything agent_guest needs from the OS goes through :class:`GuestBackend`; the
real implementation is ``agent_guest.linux_backend`` (perf_event_open(2),
move_pages(2), /proc, /sys) and the emulated one is ``emu.backends.guest``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from hypertier_common.arrays import I32, U32, U64
from hypertier_common.registry import Registry

__all__ = [
    "BACKENDS",
    "KERNEL_NODE_MIGRATIONS",
    "PAGE_SIZE",
    "AccessSamples",
    "Capability",
    "GuestBackend",
    "MoveResult",
    "NumaNode",
    "ProcessInfo",
    "SampleSource",
    "SamplerSettings",
    "Tier",
    "Vma",
]

PAGE_SIZE = 4096


class Tier(enum.Enum):
    """A memory tier: FAST (DRAM) or SLOW (CXL.mem, PMEM)."""

    FAST = "fast"
    SLOW = "slow"


class SampleSource(enum.Enum):
    """Where access samples come from, best first.

    PEBS: Intel load-latency loads + retired stores with data addresses.
    IBS: AMD IBS op sampling with data addresses.
    PAGE_FAULT: perf software page-fault events with addresses (hinting faults).
    SOFT_DIRTY: pages written since the last scan (Linux soft-dirty: clear_refs 4,
        then pagemap bit 55); reads leave no trace. Each scan costs one TLB
        flush per target and each page written after it one write fault.
    """

    PEBS = "pebs"
    IBS = "ibs"
    PAGE_FAULT = "page-fault"
    SOFT_DIRTY = "soft-dirty"

    @property
    def samples_accesses(self) -> bool:
        """Does a sample stand for a fixed number of accesses (one in
        ``period``)? Fault and soft-dirty samples are events, not a draw."""
        return self in (SampleSource.PEBS, SampleSource.IBS)


class Capability(enum.Enum):
    """Optional features a guest backend may offer (see ``capabilities()``)."""

    PEBS = "pebs"
    IBS = "ibs"
    PAGE_FAULT_SAMPLING = "page-fault-sampling"
    SOFT_DIRTY_SCAN = "soft-dirty-scan"
    TRACEPOINTS = "tracepoints"
    MOVE_PAGES = "move-pages"
    HOST_CHANNEL = "host-channel"


SOURCE_CAPABILITY: Mapping[SampleSource, Capability] = {
    SampleSource.PEBS: Capability.PEBS,
    SampleSource.IBS: Capability.IBS,
    SampleSource.PAGE_FAULT: Capability.PAGE_FAULT_SAMPLING,
    SampleSource.SOFT_DIRTY: Capability.SOFT_DIRTY_SCAN,
}


@dataclass(frozen=True)
class NumaNode:
    """One guest NUMA node as the guest sees it (sizes follow host resizes).

    ``reserved_bytes`` is the part of ``free_bytes`` that page migration into
    the node cannot take: the kernel keeps each zone's free pages above its
    watermark (plus the protection of lower zones from movable allocations),
    and move_pages(2) into a node at that mark fails with -ENOMEM.
    ``reclaimable_bytes`` is the node's page cache (file pages on the LRU
    lists): an allocation on the node (a promotion) reclaims it, least
    recently used first, when free memory runs short.
    """

    node: int
    tier: Tier
    total_bytes: int
    free_bytes: int
    has_cpus: bool
    reserved_bytes: int = 0
    reclaimable_bytes: int = 0

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes


@dataclass(frozen=True)
class Vma:
    """One mapping of a process: [start, end) in bytes, page aligned."""

    start: int
    end: int
    perms: str
    path: str = ""

    @property
    def size_bytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ProcessInfo:
    """A candidate target process."""

    pid: int
    comm: str
    rss_bytes: int
    cmdline: str = ""
    cgroup: str = ""


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample: the source, its period and, for PEBS, the load-latency floor."""

    source: SampleSource
    period: int = 1000
    ldlat_cycles: int = 64
    ring_pages: int = 64


@dataclass(frozen=True, eq=False)
class AccessSamples:
    """A batch of access samples, as parallel numpy arrays (one entry per sample).

    ``addr`` is the sampled data virtual address; ``weight`` a latency in cycles
    (0 when the source has none); ``lost`` counts records the kernel dropped and
    ``throttled`` the throttle events since the previous batch.
    """

    source: SampleSource
    pid: I32
    addr: U64
    time_ns: U64
    weight: U32
    lost: int = 0
    throttled: int = 0

    def __len__(self) -> int:
        return int(self.addr.shape[0])

    @classmethod
    def empty(cls, source: SampleSource) -> AccessSamples:
        return cls(
            source,
            np.empty(0, np.int32),
            np.empty(0, np.uint64),
            np.empty(0, np.uint64),
            np.empty(0, np.uint32),
        )


@dataclass(frozen=True, eq=False)
class MoveResult:
    """What move_pages(2) did to one batch.

    ``status`` has one entry per requested page: the node it is on now, or a
    negative errno (-ENOMEM full node, -EFAULT not mapped, -ENOENT not present,
    -EBUSY pinned or under I/O, -EACCES shared and not ours, -EAGAIN not tried:
    the call stopped at a batch that failed in part).
    """

    requested: int
    moved: int
    status: I32
    failures: Mapping[int, int] = field(default_factory=dict)


KERNEL_NODE_MIGRATIONS = (
    "numa_pages_migrated",
    "pgpromote_success",
    "pgdemote_kswapd",
    "pgdemote_direct",
    "pgdemote_khugepaged",
)
"""Of :meth:`GuestBackend.counters` (the kernel's vmstat names), those of pages
the kernel moved between nodes on its own (NUMA balancing, promotion,
demotion): any change, and the agent asks the kernel again where the targets'
pages are."""


@runtime_checkable
class GuestBackend(Protocol):
    """Everything agent_guest needs from the OS. Nothing else touches the kernel."""

    def capabilities(self) -> frozenset[Capability]:
        """The optional features this machine offers."""
        ...

    def numa_nodes(self) -> Sequence[NumaNode]:
        """Guest NUMA nodes with current sizes (virtio-mem plugs change them)."""
        ...

    def processes(self) -> Sequence[ProcessInfo]:
        """Live user processes that could be managed."""
        ...

    def vmas(self, pid: int) -> Sequence[Vma]:
        """Private anonymous/file mappings of ``pid``. Raises NoSuchProcess."""
        ...

    def node_bytes(self, pid: int) -> Mapping[int, int]:
        """``pid``'s resident bytes per NUMA node. Costs a walk of its page
        tables on Linux (/proc/pid/numa_maps): call it rarely. Raises
        NoSuchProcess or AccessDenied."""
        ...

    def start_sampling(self, pids: Sequence[int], settings: SamplerSettings) -> None:
        """Start (or restart) sampling ``pids`` (empty: system-wide).

        Raises Unsupported if the source is not in ``capabilities()``.
        """
        ...

    def read_samples(self) -> AccessSamples:
        """Drain the samples gathered since the last call (never blocks)."""
        ...

    def stop_sampling(self) -> None: ...

    def page_nodes(self, pid: int, addrs: U64) -> I32:
        """The node of each page (move_pages with nodes=NULL); -errno where unknown."""
        ...

    def move_pages(self, pid: int, addrs: U64, node: int) -> MoveResult:
        """Move the pages at ``addrs`` of ``pid`` to ``node``. Raises NoSuchProcess."""
        ...

    def channel_send(self, line: bytes) -> None:
        """Send one wire-format line to the host agent (HOST_CHANNEL capability)."""
        ...

    def channel_recv(self) -> bytes:
        """Bytes received from the host since the last call (may hold partial lines)."""
        ...

    def cpu_time_s(self) -> float:
        """CPU seconds this agent has used (user + system), for its own budget."""
        ...

    def counters(self) -> Mapping[str, int]:
        """Kernel counters (vmstat names: nr_tlb_remote_flush, ...)."""
        ...

    def keep_own_memory(self, node: int) -> int:
        """Put this agent's own memory on ``node``: its later allocations
        prefer the node and its private pages move there. Returns how many of
        them are on the node afterwards. Raises an agent_guest error where the
        OS refuses."""
        ...

    def close(self) -> None: ...


BACKENDS: Registry[GuestBackend] = Registry(
    {
        "linux": "agent_guest.linux_backend:LinuxGuestBackend",
        "emu": "emu.backends.guest:EmuGuestBackend",
    }
)
