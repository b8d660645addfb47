"""The state of the emulated machine: frames, page tables, counters, errors.

Plain data, no behaviour beyond lookups: per VM, guest frames (gPFN) of node 0
(fast) then node 1 (slow), each node a virtio-mem region of which the first
``plugged`` pages are online; ``Frames.pid``/``Frames.vpn`` is the reverse map,
``Frames.host`` the EPT (gPFN -> host node backing it, -1 when not yet backed);
per process, the guest page table ``pt`` (vpn -> gPFN, -1 not present).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from emu.workloads.synthetic import Workload
from hypertier_common.arrays import I32, I64, U32, U64, BoolArray

__all__ = [
    "FAST",
    "PAGE_SIZE",
    "SLOW",
    "EmuProcess",
    "EmuVm",
    "Frames",
    "HostNodeState",
    "InvariantError",
    "NoSuchProcessError",
    "NoSuchVmError",
    "VmCounters",
    "round_up",
]

PAGE_SIZE = 4096
FAST, SLOW = 0, 1  # guest node ids and host tier codes


class NoSuchVmError(LookupError):
    def __init__(self, vm: str) -> None:
        super().__init__(f"no VM named {vm!r}")
        self.vm = vm


class NoSuchProcessError(LookupError):
    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} does not exist")
        self.pid = pid


class InvariantError(AssertionError):
    """The emulator lost or duplicated a page (a bug, never expected)."""


@dataclass
class VmCounters:
    """Per-VM counters. Flush names follow KVM stats and guest /proc/vmstat."""

    tlb_flush: int = 0  # KVM vcpu stat: guest TLB flushes KVM performed
    remote_tlb_flush: int = 0  # KVM vm stat: kvm_flush_remote_tlbs()
    invept: int = 0  # INVEPT executions (one per vCPU per remote flush)
    tlb_local_flush_one: int = 0  # guest vmstat nr_tlb_local_flush_one
    tlb_local_flush_all: int = 0  # guest vmstat nr_tlb_local_flush_all
    tlb_remote_flush: int = 0  # guest vmstat nr_tlb_remote_flush
    accesses: int = 0
    fast_accesses: int = 0
    tlb_misses: int = 0
    cold_walks: int = 0
    guest_pages_moved: int = 0
    host_pages_moved: int = 0
    unplug_pages_moved: int = 0
    vm_exits: int = 0
    samples: int = 0
    samples_lost: int = 0
    guest_mgmt_ns: float = 0.0  # tracking + migration on the VM's vCPUs
    host_mgmt_ns: float = 0.0  # host-side scanning and migration CPU


@dataclass
class HostNodeState:
    node: int
    tier: int
    capacity_pages: int
    used_pages: int = 0


@dataclass
class EmuProcess:
    pid: int
    vm: str
    comm: str
    workload: Workload | None
    npages: int
    base_addr: int
    threads: int
    target_accesses: int
    pt: I64
    pinned: BoolArray
    soft_dirty: BoolArray  # written since the last soft-dirty scan
    protected: BoolArray
    done_accesses: int = 0
    finished_at_s: float | None = None
    alive: bool = True
    # accesses per page so far, per workload phase (the oracle's hindsight)
    phase_counts: dict[int, I64] = field(default_factory=dict)
    # node each page goes to at first touch (an mbind(2)-style policy); None:
    # node 0 first, then node 1 (the Linux default)
    preferred: npt.NDArray[np.int8] | None = None
    _tier_cache: npt.NDArray[np.int8] | None = None

    @property
    def running(self) -> bool:
        return self.alive and self.workload is not None and self.finished_at_s is None

    def addr_of(self, vpn: npt.NDArray[np.integer]) -> U64:
        return (self.base_addr + vpn.astype(np.uint64) * PAGE_SIZE).astype(np.uint64)


@dataclass
class Frames:
    """Per guest frame: owner pid and vpn (reverse map), host node, EPT A/D bits."""

    pid: I32
    vpn: I64
    host: npt.NDArray[np.int8]
    ept_a: BoolArray
    ept_d: BoolArray

    @classmethod
    def allocate(cls, n: int) -> Frames:
        return cls(
            np.full(n, -1, np.int32),
            np.full(n, -1, np.int64),
            np.full(n, -1, np.int8),
            np.zeros(n, bool),
            np.zeros(n, bool),
        )


@dataclass
class EmuVm:
    name: str
    uuid: str
    vcpus: int
    node_base: tuple[int, int]
    node_max: tuple[int, int]
    plugged: list[int]
    requested: list[int]
    host_node: tuple[int, int]
    counters: VmCounters = field(default_factory=VmCounters)
    procs: dict[int, EmuProcess] = field(default_factory=dict)
    vtime_s: float = 0.0
    budget_s: float = 0.0
    ns_per_access: float = 20.0  # virtual time per access, from the last chunk
    pending_ns: float = 0.0  # management time owed by the vCPUs
    pending_full_flushes: float = 0.0  # vCPU-TLB full flushes not yet costed
    pending_one_flushes: int = 0
    # tracking state
    sampling: str | None = None  # "pebs" | "ibs" | "page-fault" | "soft-dirty"
    sample_period: int = 1000
    sample_ldlat_cycles: int = 0
    sample_pids: frozenset[int] = frozenset()
    ring_capacity: int = 0
    ring: list[tuple[I32, U64, U32]] = field(default_factory=list)
    ring_len: int = 0
    ring_lost: int = 0
    hint_scan_pages_per_s: int = 65536
    hint_cursor: int = 0
    track_ept_a: bool = False
    track_pml: bool = False
    pml_log: list[I64] = field(default_factory=list)
    pml_pending: int = 0
    to_guest: bytearray = field(default_factory=bytearray)
    to_host: bytearray = field(default_factory=bytearray)
    # virtio-mem: when the driver tries again an unplug that stopped short,
    # per node (inf: none pending), and its back-off (s)
    unplug_retry_at: list[float] = field(default_factory=lambda: [math.inf] * 2)
    unplug_retry_s: list[float] = field(default_factory=lambda: [0.0] * 2)
    _frames: Frames | None = None

    @property
    def f(self) -> Frames:
        """The frame arrays, allocated at first use (idle VMs cost nothing)."""
        if self._frames is None:
            self._frames = Frames.allocate(self.nframes)
        return self._frames

    @property
    def nframes(self) -> int:
        return self.node_max[0] + self.node_max[1]

    def node_of_frame(self, gfn: npt.NDArray[np.integer]) -> I32:
        return (gfn >= self.node_base[1]).astype(np.int32)

    def used_pages(self, node: int) -> int:
        if self.f.pid is None:
            return 0
        b = self.node_base[node]
        return int(np.count_nonzero(self.f.pid[b : b + self.plugged[node]] >= 0))

    def fast_hit_ratio(self) -> float:
        c = self.counters
        return c.fast_accesses / c.accesses if c.accesses else 0.0


def round_up(n: int, blk: int) -> int:
    """``n`` rounded up to a multiple of ``blk``."""
    return -(-n // blk) * blk
