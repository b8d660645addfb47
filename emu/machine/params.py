"""Every hardware and cost parameter of the emulator, in one place, with sources.

Latencies are loaded-to-use latencies of an LLC miss; the workloads model LLC
miss streams (what PEBS load-latency sampling sees), so each emulated access
costs one memory access of its tier. All numbers can be overridden per run.

Sources:
- [IZR19] Izraelevitz et al., "Basic Performance Measurements of the Intel Optane DC
  Persistent Memory Module", arXiv:1903.05714, 2019: DRAM random read 81 ns,
  Optane random read 305 ns; Optane read bandwidth ~6.6 GB/s per DIMM, write
  ~2.3 GB/s per DIMM.
- [POND23] Li et al., "Pond: CXL-Based Memory Pooling Systems for Cloud Platforms",
  ASPLOS 2023: CXL adds 70-90 ns to NUMA-local latency (single hop expander).
- [SUN23] Sun et al., "Demystifying CXL Memory with Genuine CXL-Ready Systems and
  Devices", MICRO 2023: CXL.mem expander load latency ~ 2.2x local DRAM (~ 200 ns),
  bandwidth ~ 25-50% of a DDR5 socket.
- [BHA08] Bhargava et al., "Accelerating Two-Dimensional Page Walks for
  Virtualized Systems", ASPLOS 2008: a 2D (nested) walk needs up to 24 memory
  references with 4-level guest and host tables.
- [MEMTIS23] Lee et al., "MEMTIS", SOSP 2023; [DEMETER25] "Demeter", SOSP 2025:
  PEBS sampling costs; guest migration costs ~ 2-4 us per 4 KiB page.
- STLB sizes: Intel Skylake/Ice Lake second-level TLB 1536 entries (4 KiB pages).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["PROFILES", "CostModel", "MemoryProfile", "Params", "TlbModel", "profile"]


@dataclass(frozen=True)
class MemoryProfile:
    """Latency and bandwidth of the fast and slow tier of one machine kind."""

    name: str
    fast_latency_ns: float
    slow_latency_ns: float
    fast_bandwidth_gib_s: float
    slow_bandwidth_gib_s: float
    source: str


PROFILES: dict[str, MemoryProfile] = {
    "cxl": MemoryProfile(
        "cxl", 90.0, 200.0, 100.0, 30.0, "[POND23] +70-90 ns; [SUN23] ~2.2x, 25-50% bw"
    ),
    "pmem": MemoryProfile(
        "pmem", 81.0, 305.0, 100.0, 39.0, "[IZR19] 81 ns vs 305 ns; 6 DIMMs x 6.6 GB/s"
    ),
}


def profile(name: str) -> MemoryProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"memory profile {name!r} unknown; choose from {sorted(PROFILES)}"
        ) from None


@dataclass(frozen=True)
class TlbModel:
    """Per-vCPU TLB and 2D page-walk costs.

    A miss in steady state walks with warm paging-structure caches
    (``warm_walk_refs`` references); after a full flush (INVEPT or a guest full
    flush) the caches are cold and a walk takes up to ``cold_walk_refs`` = 24
    references [BHA08]. Each reference costs ``walk_ref_ns`` (mostly cache hits).
    """

    entries: int = 1536
    warm_walk_refs: float = 4.0
    cold_walk_refs: float = 24.0
    walk_ref_ns: float = 12.0


@dataclass(frozen=True)
class CostModel:
    """CPU costs of tracking and migration, charged where they are paid.

    Guest-side costs are charged to the VM (they run on its vCPUs); host-side
    scanning is charged to host management CPU, and its TLB flushes to the VM.
    """

    pebs_sample_ns: float = 250.0  # PEBS assist + PMI amortised per record
    hint_fault_ns: float = 1500.0  # a NUMA hinting fault (#PF, handler, return)
    # a write to a page write-protected by clear_refs 4 (#PF, set soft-dirty,
    # return): a minor fault without the NUMA-balancing bookkeeping
    wp_fault_ns: float = 1000.0
    pte_scan_ns: float = 25.0  # test-and-clear one guest PTE.A
    # read one present guest PTE's node (/proc/pid/numa_maps: 4 GiB of 4 KiB
    # pages in 50 ms on the reference machine)
    numa_maps_page_ns: float = 48.0
    ept_scan_ns: float = 35.0  # host: test-and-clear one EPT A bit (rmap walk)
    pml_entry_ns: float = 5.0  # host: drain one PML log entry
    pml_exit_ns: float = 2000.0  # a PML-full VM exit (512 entries)
    guest_migrate_page_ns: float = 3000.0  # guest move_pages, per 4 KiB page
    host_migrate_page_ns: float = 3500.0  # host migrate + EPT update, per page
    ept_fault_ns: float = 1200.0  # EPT violation exit to back a new guest frame
    remote_flush_ns: float = 3000.0  # kvm_flush_remote_tlbs: IPIs + INVEPT, per VM
    guest_remote_flush_ns: float = 1500.0  # guest flush IPI round, per event
    pml_log_entries: int = 512
    flush_ceiling_pages: int = 33  # x86 tlb_single_page_flush_ceiling
    # pages migrate_pages() unmaps before one batched TLB flush
    # (NR_MAX_BATCHED_MIGRATION, Linux >= 6.4); 1 models older kernels, which
    # flush each page on its own
    migrate_batch_pages: int = 512
    scan_flush_pages: int = 512  # pages whose A bits one host flush covers
    ebusy_fraction: float = 0.002  # pages pinned (DMA, GUP) -> -EBUSY


@dataclass(frozen=True)
class Params:
    """The full parameter set of one emulated machine."""

    memory: MemoryProfile = field(default_factory=lambda: PROFILES["cxl"])
    tlb: TlbModel = field(default_factory=TlbModel)
    cost: CostModel = field(default_factory=CostModel)
    block_bytes: int = 2 << 20  # virtio-mem block size
    # The guest's virtio-mem driver tries an unplug that stopped short (-EBUSY:
    # pages it could not move) again after 50 s, doubling to 300 s, and at once
    # on a new request (Linux drivers/virtio/virtio_mem.c,
    # VIRTIO_MEM_RETRY_TIMER_MIN_MS / _MAX_MS).
    unplug_retry_min_s: float = 50.0
    unplug_retry_max_s: float = 300.0
    # Share (%) of each guest node's plugged memory its kernel keeps free: the
    # zones' watermarks, below which neither a fault nor move_pages(2) gets a
    # page there (a fault falls back to the other node, a move fails -ENOMEM).
    # Linux keeps about 0.5-1 % (more with lowmem protection); 0 models none.
    node_reserve_pct: float = 0.0

    def with_profile(self, name: str) -> Params:
        return replace(self, memory=profile(name))
