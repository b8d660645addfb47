"""The emulated machine: host NUMA tiers, VMs with two guest nodes, processes.

One :class:`World` holds everything; ``emu.guest.EmuGuestBackend`` and
``emu.host.EmuHostBackend`` are views onto it, so a host-side resize is visible
inside the guest. State is numpy arrays:

- per VM, guest frames (gPFN) of node 0 (fast) then node 1 (slow), each node a
  virtio-mem region of which the first ``plugged`` pages are online;
  ``Frames.pid``/``Frames.vpn`` is the reverse map, ``Frames.host`` the EPT
  (gPFN -> host node backing it, -1 when not yet backed);
- per process, the guest page table ``pt`` (vpn -> gPFN, -1 not present).

Workloads run in chunks when time advances; each chunk is costed (memory
latency per tier, TLB misses with warm or cold 2D walks, management overhead)
and feeds the tracking sources (PEBS, guest PTE.A, hinting faults, host EPT.A,
PML). Every TLB flush kind of the seed's table is counted per VM.
"""

from __future__ import annotations

import errno
import itertools
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from emu.clock import FakeClock
from emu.params import Params
from emu.workloads import Workload

__all__ = [
    "FAST",
    "PAGE_SIZE",
    "SLOW",
    "EmuProcess",
    "EmuVm",
    "HostNodeState",
    "InvariantError",
    "NoSuchProcessError",
    "NoSuchVmError",
    "VmCounters",
    "World",
]

PAGE_SIZE = 4096
FAST, SLOW = 0, 1  # guest node ids and host tier codes
_CHUNK = 1 << 20
_MIN_CHUNK = 1 << 14
_VMA_BASE = 0x7F00_0000_0000
_CYCLES_PER_NS = 2.5

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


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

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    abit: BoolArray
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

    def addr_of(self, vpn: npt.NDArray[np.integer]) -> npt.NDArray[np.uint64]:
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
    sampling: str | None = None  # "pebs" | "ibs" | "page-fault" | "a-bit"
    sample_period: int = 1000
    sample_ldlat_cycles: int = 0
    sample_pids: frozenset[int] = frozenset()
    ring_capacity: int = 0
    ring: list[tuple[I32, npt.NDArray[np.uint64], npt.NDArray[np.uint32]]] = field(
        default_factory=list
    )
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


class World:
    """The whole emulated machine. Deterministic for a given seed and call order."""

    def __init__(
        self,
        host_fast_bytes: int,
        host_slow_bytes: int,
        params: Params | None = None,
        seed: int = 0,
        clock: FakeClock | None = None,
    ) -> None:
        self.params = params or Params()
        self.rng = np.random.default_rng(seed)
        self.clock = clock or FakeClock()
        self.clock.on_advance(self.advance)
        self.host_nodes = [
            HostNodeState(0, FAST, host_fast_bytes // PAGE_SIZE),
            HostNodeState(1, SLOW, host_slow_bytes // PAGE_SIZE),
        ]
        self._host_tier = np.array([n.tier for n in self.host_nodes], np.int8)
        self.vms: dict[str, EmuVm] = {}
        self.oplog: list[tuple[object, ...]] = []
        self.events: list[tuple[str, str]] = []  # (vm, "started" | "stopped")
        self.metadata: dict[str, str] = {}
        self._pids = itertools.count(1000)
        self.mem = self.params.memory

    # ---------------------------------------------------------------- setup
    def add_vm(
        self,
        name: str,
        vcpus: int,
        fast_bytes: int,
        slow_bytes: int,
        fast_max_bytes: int | None = None,
        slow_max_bytes: int | None = None,
    ) -> EmuVm:
        """Define and start a VM with a fast guest node 0 and a CPU-less slow node 1."""
        if name in self.vms:
            raise ValueError(f"VM {name!r} already exists")
        blk = self.params.block_bytes // PAGE_SIZE
        # a virtio-mem device is at least as large as what is plugged at start
        fmax = _round_up(max(fast_max_bytes or 0, fast_bytes) // PAGE_SIZE, blk)
        smax = _round_up(max(slow_max_bytes or 0, slow_bytes) // PAGE_SIZE, blk)
        fast = min(_round_up(fast_bytes // PAGE_SIZE, blk), fmax)
        slow = min(_round_up(slow_bytes // PAGE_SIZE, blk), smax)
        vm = EmuVm(
            name=name,
            uuid=str(uuidlib.UUID(int=int(self.rng.integers(0, 1 << 62)))),
            vcpus=vcpus,
            node_base=(0, fmax),
            node_max=(fmax, smax),
            plugged=[fast, slow],
            requested=[fast, slow],
            host_node=(0, 1),
        )
        self.vms[name] = vm
        self.events.append((name, "started"))
        self.oplog.append(("add_vm", name, fast, slow))
        return vm

    def vm(self, name: str) -> EmuVm:
        try:
            return self.vms[name]
        except KeyError:
            raise NoSuchVmError(name) from None

    def remove_vm(self, name: str) -> None:
        vm = self.vm(name)
        for pid in list(vm.procs):
            self.kill(name, pid)
        if vm._frames is not None:
            for hn in self.host_nodes:
                hn.used_pages -= int(np.count_nonzero(vm.f.host == hn.node))
        del self.vms[name]
        self.metadata.pop(name, None)
        self.events.append((name, "stopped"))
        self.oplog.append(("remove_vm", name))

    def spawn(
        self,
        vm_name: str,
        workload: Workload | None,
        total_accesses: int = 0,
        npages: int | None = None,
        comm: str | None = None,
        threads: int | None = None,
        prefault: bool = True,
    ) -> int:
        """Start a process in a VM running ``workload`` for ``total_accesses``.

        With ``prefault`` its pages are touched in address order first (the load
        phase of real programs), so first-touch placement fills the fast node
        with the lowest addresses. Returns the pid.
        """
        vm = self.vm(vm_name)
        n = workload.npages if workload is not None else int(npages or 0)
        pid = next(self._pids)
        base = _VMA_BASE + (pid << 32)
        pinned = np.zeros(n, bool)
        k = int(n * self.params.cost.ebusy_fraction)
        if k:
            pinned[self.rng.choice(n, k, replace=False)] = True
        proc = EmuProcess(
            pid=pid,
            vm=vm_name,
            comm=comm or (workload.name if workload else "proc"),
            workload=workload,
            npages=n,
            base_addr=base,
            threads=threads or vm.vcpus,
            target_accesses=total_accesses,
            pt=np.full(n, -1, np.int64),
            pinned=pinned,
            abit=np.zeros(n, bool),
            protected=np.zeros(n, bool),
        )
        vm.procs[pid] = proc
        if prefault:
            self._fault_in(vm, proc, np.arange(n, dtype=np.int64))
        self.oplog.append(("spawn", vm_name, pid, n))
        return pid

    def process(self, vm_name: str, pid: int) -> EmuProcess:
        proc = self.vm(vm_name).procs.get(pid)
        if proc is None or not proc.alive:
            raise NoSuchProcessError(pid)
        return proc

    def kill(self, vm_name: str, pid: int) -> None:
        """Exit a process: its frames return to the guest's free pool."""
        vm = self.vm(vm_name)
        proc = self.process(vm_name, pid)
        mapped = proc.pt[proc.pt >= 0]
        vm.f.pid[mapped] = -1
        vm.f.vpn[mapped] = -1
        proc.pt[:] = -1
        proc.alive = False
        del vm.procs[pid]
        self.oplog.append(("kill", vm_name, pid))

    # ------------------------------------------------------------ allocation
    def _free_frames(self, vm: EmuVm, node: int, k: int) -> I64:
        b = vm.node_base[node]
        free = np.flatnonzero(vm.f.pid[b : b + vm.plugged[node]] < 0)
        return (free[:k] + b).astype(np.int64)

    def _back(self, vm: EmuVm, gfns: I64) -> None:
        """Back guest frames with host memory (EPT violation -> host allocation)."""
        need = gfns[vm.f.host[gfns] < 0]
        if len(need) == 0:
            return
        for node in (FAST, SLOW):
            sel = need[vm.node_of_frame(need) == node]
            if len(sel) == 0:
                continue
            hn = self.host_nodes[vm.host_node[node]]
            fits = min(len(sel), max(0, hn.capacity_pages - hn.used_pages))
            # a full host node spills to the other one (preferred, not strict)
            other = self.host_nodes[1 - hn.node]
            vm.f.host[sel[:fits]] = hn.node
            vm.f.host[sel[fits:]] = other.node
            hn.used_pages += fits
            other.used_pages += len(sel) - fits
        vm.counters.vm_exits += len(need)
        vm.pending_ns += len(need) * self.params.cost.ept_fault_ns
        self._invalidate_tiers(vm)

    def _fault_in(self, vm: EmuVm, proc: EmuProcess, vpns: I64) -> None:
        """First touch: allocate on node 0, fall back to node 1 (Linux default).

        Pages with a preferred node (``proc.preferred``) go there first.
        """
        vpns = vpns[proc.pt[vpns] < 0]
        if proc.preferred is not None:
            slow_first = proc.preferred[vpns] == SLOW
            self._fault_in_order(vm, proc, vpns[~slow_first], (FAST, SLOW))
            self._fault_in_order(vm, proc, vpns[slow_first], (SLOW, FAST))
        else:
            self._fault_in_order(vm, proc, vpns, (FAST, SLOW))

    def _fault_in_order(
        self, vm: EmuVm, proc: EmuProcess, vpns: I64, nodes: tuple[int, int]
    ) -> None:
        for node in nodes:
            if len(vpns) == 0:
                break
            frames = self._free_frames(vm, node, len(vpns))
            got = len(frames)
            proc.pt[vpns[:got]] = frames
            vm.f.pid[frames] = proc.pid
            vm.f.vpn[frames] = vpns[:got]
            self._back(vm, frames)
            vpns = vpns[got:]
        if len(vpns):
            # guest OOM: the kernel would kill; we keep the pages unmapped and
            # count the failure so a test sees it
            vm.counters.vm_exits += 0
            self.oplog.append(("oom", vm.name, proc.pid, len(vpns)))
        proc._tier_cache = None

    def _invalidate_tiers(self, vm: EmuVm) -> None:
        for p in vm.procs.values():
            p._tier_cache = None

    def page_tiers(self, vm_name: str, pid: int) -> npt.NDArray[np.int8]:
        """Host tier (FAST/SLOW) backing each page of a process; -1 not present."""
        return self._page_tiers(self.vm(vm_name), self.process(vm_name, pid)).copy()

    def _page_tiers(self, vm: EmuVm, proc: EmuProcess) -> npt.NDArray[np.int8]:
        if proc._tier_cache is None:
            hosts = vm.f.host[np.maximum(proc.pt, 0)]
            tiers = self._host_tier[np.maximum(hosts, 0)]
            tiers[proc.pt < 0] = -1
            proc._tier_cache = tiers
        return proc._tier_cache

    # ------------------------------------------------------- flush accounting
    def _guest_flush_pages(self, vm: EmuVm, proc: EmuProcess, npages: int) -> None:
        """Flushes of the guest kernel for ``npages`` single-page unmaps."""
        if npages <= 0:
            return
        c = vm.counters
        c.tlb_local_flush_one += npages
        vm.pending_one_flushes += npages * min(proc.threads, vm.vcpus)
        if min(proc.threads, vm.vcpus) > 1:
            c.tlb_remote_flush += npages
            c.tlb_flush += npages  # PV flush of a preempted vCPU (approximation)
            vm.pending_ns += npages * self.params.cost.guest_remote_flush_ns

    def _guest_flush_range(self, vm: EmuVm, proc: EmuProcess, ranges: int) -> None:
        """Full flushes for ``ranges`` range changes above the flush ceiling."""
        if ranges <= 0:
            return
        c = vm.counters
        c.tlb_local_flush_all += ranges
        cpus = min(proc.threads, vm.vcpus)
        vm.pending_full_flushes += ranges * cpus
        if cpus > 1:
            c.tlb_remote_flush += ranges
            c.tlb_flush += ranges
            vm.pending_ns += ranges * self.params.cost.guest_remote_flush_ns

    def _host_remote_flush(self, vm: EmuVm, count: int) -> None:
        """kvm_flush_remote_tlbs(): INVEPT on every vCPU, all TLBs cold."""
        if count <= 0:
            return
        c = vm.counters
        c.remote_tlb_flush += count
        c.invept += count * vm.vcpus
        c.tlb_flush += count * vm.vcpus
        vm.pending_full_flushes += count * vm.vcpus
        vm.pending_ns += count * self.params.cost.remote_flush_ns

    # ------------------------------------------------------------- running
    def advance(self, dt_s: float) -> None:
        """Run every VM's workloads for ``dt_s`` of virtual time (clock listener)."""
        for vm in self.vms.values():
            vm.budget_s += dt_s
            self._run_vm(vm)

    def _run_vm(self, vm: EmuVm) -> None:
        while vm.budget_s > 0:
            running = [p for p in vm.procs.values() if p.running]
            if not running:
                # idle: management work still happens on idle vCPUs
                vm.vtime_s += vm.budget_s
                vm.counters.guest_mgmt_ns += 0.0
                vm.pending_ns = 0.0
                vm.pending_full_flushes = 0.0
                vm.pending_one_flushes = 0
                vm.budget_s = 0.0
                return
            for proc in running:
                if vm.budget_s <= 0:
                    break
                spent = self._run_chunk(vm, proc)
                vm.budget_s -= spent
                vm.vtime_s += spent

    def _run_chunk(self, vm: EmuVm, proc: EmuProcess) -> float:
        wl = proc.workload
        if wl is None:
            return 0.0
        # size the chunk to the remaining time budget so policies see the
        # effect of each epoch (estimate from the previous chunk's cost)
        fit = int(vm.budget_s * 1e9 / max(vm.ns_per_access, 1e-3)) + 1
        n = min(max(fit, _MIN_CHUNK), _CHUNK, proc.target_accesses - proc.done_accesses)
        vpn = wl.generate(n)
        counts = np.bincount(vpn, minlength=proc.npages)
        acc = proc.phase_counts.get(wl.phase)
        if acc is None:
            proc.phase_counts[wl.phase] = counts.astype(np.int64)
        else:
            acc += counts
        touched = counts > 0
        missing = touched & (proc.pt < 0)
        if missing.any():
            self._fault_in(vm, proc, np.flatnonzero(missing).astype(np.int64))
        tiers = self._page_tiers(vm, proc)
        fast_n = int(counts[tiers == FAST].sum())
        slow_n = n - fast_n
        mem = self.mem
        tlb = self.params.tlb
        # TLB: independent-reference estimate, top-E pages hit per vCPU
        e = tlb.entries
        if np.count_nonzero(touched) > e:
            hit = float(np.partition(counts, -e)[-e:].sum()) / n
        else:
            hit = 1.0
        misses = n * (1.0 - hit)
        distinct = float(np.count_nonzero(touched)) / max(1, proc.threads)
        cold = min(float(n), vm.pending_full_flushes * min(e, distinct))
        cold += min(float(n), float(vm.pending_one_flushes))
        vm.pending_full_flushes = 0.0
        vm.pending_one_flushes = 0
        cpus = min(proc.threads, vm.vcpus)
        mem_ns = (fast_n * mem.fast_latency_ns + slow_n * mem.slow_latency_ns) / wl.mlp
        walk_ns = (
            misses * tlb.warm_walk_refs + cold * tlb.cold_walk_refs
        ) * tlb.walk_ref_ns
        t_ns = (mem_ns + walk_ns) / cpus
        # the slow tier's bandwidth is shared by the VMs running on it
        share = mem.slow_bandwidth_gib_s * (1 << 30) / max(1, len(self.vms))
        t_ns = max(t_ns, slow_n * 64 / share * 1e9)
        t_ns += vm.pending_ns / vm.vcpus
        vm.pending_ns = 0.0
        c = vm.counters
        c.accesses += n
        c.fast_accesses += fast_n
        c.tlb_misses += int(misses + cold)
        c.cold_walks += int(cold)
        proc.done_accesses += n
        # tracking side effects
        if vm.sampling is not None and (
            not vm.sample_pids or proc.pid in vm.sample_pids
        ):
            self._track(vm, proc, vpn, counts, tiers)
        if vm.track_ept_a or vm.track_pml:
            self._track_host(
                vm, proc, vpn, touched, wl.write_fraction, wl.last_writes()
            )
        vm.ns_per_access = (mem_ns + walk_ns) / cpus / n
        t_s = t_ns * 1e-9
        if proc.done_accesses >= proc.target_accesses:
            proc.finished_at_s = vm.vtime_s + t_s
        return t_s

    def _track(
        self,
        vm: EmuVm,
        proc: EmuProcess,
        vpn: I32,
        counts: I64,
        tiers: npt.NDArray[np.int8],
    ) -> None:
        cost = self.params.cost
        if vm.sampling in ("pebs", "ibs"):
            period = vm.sample_period
            phase = int(self.rng.integers(0, period))
            sv = vpn[phase::period].astype(np.int64)
            lat = np.where(
                tiers[sv] == FAST, self.mem.fast_latency_ns, self.mem.slow_latency_ns
            )
            weight = (lat * _CYCLES_PER_NS).astype(np.uint32)
            if vm.sampling == "pebs" and vm.sample_ldlat_cycles:
                # load-latency facility: only loads slower than the threshold
                keep = weight >= vm.sample_ldlat_cycles
                sv, weight = sv[keep], weight[keep]
            offs = self.rng.integers(0, PAGE_SIZE // 64, len(sv)) * 64
            addr = proc.addr_of(sv) + offs.astype(np.uint64)
            self._ring_push(vm, proc.pid, addr, weight)
            vm.counters.guest_mgmt_ns += len(sv) * cost.pebs_sample_ns
            vm.pending_ns += len(sv) * cost.pebs_sample_ns
        elif vm.sampling == "page-fault":
            hit = proc.protected & (counts > 0)
            pages = np.flatnonzero(hit)
            proc.protected[pages] = False
            if len(pages):
                addr = proc.addr_of(pages)
                self._ring_push(vm, proc.pid, addr, np.zeros(len(pages), np.uint32))
                ns = len(pages) * cost.hint_fault_ns
                vm.counters.guest_mgmt_ns += ns
                vm.pending_ns += ns
        elif vm.sampling == "a-bit":
            proc.abit |= counts > 0

    def _ring_push(
        self,
        vm: EmuVm,
        pid: int,
        addr: npt.NDArray[np.uint64],
        weight: npt.NDArray[np.uint32],
    ) -> None:
        room = vm.ring_capacity - vm.ring_len
        if len(addr) > room:
            vm.ring_lost += len(addr) - max(room, 0)
            addr, weight = addr[: max(room, 0)], weight[: max(room, 0)]
        if len(addr):
            vm.ring.append((np.full(len(addr), pid, np.int32), addr, weight))
            vm.ring_len += len(addr)

    def _track_host(
        self,
        vm: EmuVm,
        proc: EmuProcess,
        vpn: I32,
        touched: BoolArray,
        wf: float,
        writes: BoolArray | None = None,
    ) -> None:
        gfn = proc.pt[touched]
        gfn = gfn[gfn >= 0]
        if vm.track_ept_a:
            vm.f.ept_a[gfn] = True
        if vm.track_pml and (wf > 0 or writes is not None):
            # recorded store flags where the workload has them, else sampled
            w = (
                np.unique(vpn[writes])
                if writes is not None
                else np.unique(vpn[:: max(1, round(1 / wf))])
            )
            wg = proc.pt[w]
            wg = wg[wg >= 0]
            new = wg[~vm.f.ept_d[wg]]
            vm.f.ept_d[new] = True
            if len(new):
                vm.pml_log.append(new)
                vm.pml_pending += len(new)
                exits = vm.pml_pending // self.params.cost.pml_log_entries
                vm.pml_pending %= self.params.cost.pml_log_entries
                vm.counters.vm_exits += exits
                ns = exits * self.params.cost.pml_exit_ns
                vm.pending_ns += ns
                vm.counters.host_mgmt_ns += len(new) * self.params.cost.pml_entry_ns

    # -------------------------------------------------- guest-side operations
    def start_sampling(
        self,
        vm_name: str,
        source: str,
        pids: Iterable[int] = (),
        period: int = 1000,
        ring_pages: int = 64,
        ldlat_cycles: int = 0,
    ) -> None:
        """Arm a sample source for ``pids`` (empty: every process of the VM).

        PEBS keeps only accesses of at least ``ldlat_cycles`` latency (the
        load-latency threshold), so a threshold above the fast tier's latency
        samples slow-tier accesses only.
        """
        vm = self.vm(vm_name)
        if source not in ("pebs", "ibs", "page-fault", "a-bit"):
            raise ValueError(f"unknown sample source {source!r}")
        vm.sampling = source
        vm.sample_period = max(1, period)
        vm.sample_ldlat_cycles = max(0, ldlat_cycles)
        vm.sample_pids = frozenset(pids)
        # a perf record with TID|ADDR|TIME|WEIGHT is 48 bytes; one ring per vCPU
        vm.ring_capacity = ring_pages * PAGE_SIZE // 48 * vm.vcpus
        self.oplog.append(("start_sampling", vm_name, source, period))

    def stop_sampling(self, vm_name: str) -> None:
        vm = self.vm(vm_name)
        vm.sampling = None
        vm.ring.clear()
        vm.ring_len = 0
        for p in vm.procs.values():
            p.protected[:] = False

    def drain_samples(
        self, vm_name: str, dt_s: float = 0.0
    ) -> tuple[I32, npt.NDArray[np.uint64], npt.NDArray[np.uint32], int]:
        """Samples gathered since the last drain: (pid, addr, weight, lost).

        For "a-bit" this is the scan itself (accessed pages, bits cleared, one
        flush per process); for "page-fault" it also re-protects the next slice
        of each target process (NUMA-balancing-style scan of ``dt_s`` worth).
        """
        vm = self.vm(vm_name)
        cost = self.params.cost
        targets = [
            p
            for p in vm.procs.values()
            if not vm.sample_pids or p.pid in vm.sample_pids
        ]
        if vm.sampling == "a-bit":
            for p in targets:
                pages = np.flatnonzero(p.abit)
                p.abit[:] = False
                addr = p.addr_of(pages)
                vm.ring.append(
                    (
                        np.full(len(pages), p.pid, np.int32),
                        addr,
                        np.zeros(len(pages), np.uint32),
                    )
                )
                vm.ring_len += len(pages)
                ns = p.npages * cost.pte_scan_ns
                vm.counters.guest_mgmt_ns += ns
                vm.pending_ns += ns
                self._guest_flush_range(vm, p, 1)
        elif vm.sampling == "page-fault":
            budget = int(vm.hint_scan_pages_per_s * max(dt_s, 0.0))
            for p in targets:
                if budget <= 0 or p.npages == 0:
                    break
                k = min(budget, p.npages)
                idx = (vm.hint_cursor + np.arange(k)) % p.npages
                idx = idx[p.pt[idx] >= 0]
                p.protected[idx] = True
                vm.hint_cursor = (vm.hint_cursor + k) % p.npages
                ranges = max(1, k // 65536)  # change_prot_numa works in 256 MiB steps
                self._guest_flush_range(vm, p, ranges)
                ns = k * cost.pte_scan_ns
                vm.counters.guest_mgmt_ns += ns
                vm.pending_ns += ns
                budget -= k
        if vm.ring:
            pid = np.concatenate([r[0] for r in vm.ring])
            addr = np.concatenate([r[1] for r in vm.ring])
            weight = np.concatenate([r[2] for r in vm.ring])
        else:
            pid = np.empty(0, np.int32)
            addr = np.empty(0, np.uint64)
            weight = np.empty(0, np.uint32)
        lost = vm.ring_lost
        vm.ring.clear()
        vm.ring_len = 0
        vm.ring_lost = 0
        vm.counters.samples += len(addr)
        vm.counters.samples_lost += lost
        return pid, addr, weight, lost

    def _vpns(
        self, proc: EmuProcess, addrs: npt.NDArray[np.uint64]
    ) -> tuple[I64, BoolArray]:
        a = np.asarray(addrs, dtype=np.uint64)
        off = a.astype(np.int64) - proc.base_addr
        vpn = off // PAGE_SIZE
        inside = (off >= 0) & (vpn < proc.npages)
        return np.where(inside, vpn, 0), inside

    def page_nodes(self, vm_name: str, pid: int, addrs: npt.NDArray[np.uint64]) -> I32:
        """move_pages(2) with nodes=NULL: node per page, -EFAULT/-ENOENT otherwise."""
        vm = self.vm(vm_name)
        proc = self.process(vm_name, pid)
        vpn, inside = self._vpns(proc, addrs)
        gfn = proc.pt[vpn]
        status = np.where(gfn >= 0, vm.node_of_frame(np.maximum(gfn, 0)), -errno.ENOENT)
        return np.where(inside, status, -errno.EFAULT).astype(np.int32)

    def move_pages(
        self, vm_name: str, pid: int, addrs: npt.NDArray[np.uint64], node: int
    ) -> I32:
        """Guest move_pages(2) of ``addrs`` to guest ``node``; per-page status.

        Status: the node the page is on afterwards, or -EFAULT (outside any
        mapping), -ENOENT (not present), -EBUSY (pinned), -ENOMEM (target full).
        Raises NoSuchProcessError (ESRCH) if the process is gone.
        """
        vm = self.vm(vm_name)
        proc = self.process(vm_name, pid)
        if node not in (FAST, SLOW):
            raise ValueError(f"node {node} does not exist")
        vpn, inside = self._vpns(proc, addrs)
        status = np.full(len(vpn), -errno.EFAULT, np.int32)
        gfn = proc.pt[vpn]
        present = inside & (gfn >= 0)
        status[inside & (gfn < 0)] = -errno.ENOENT
        cur = vm.node_of_frame(np.maximum(gfn, 0))
        status[present & (cur == node)] = node
        busy = present & (cur != node) & proc.pinned[vpn]
        status[busy] = -errno.EBUSY
        want = np.flatnonzero(present & (cur != node) & ~proc.pinned[vpn])
        # duplicates in one call move once
        want = want[np.unique(vpn[want], return_index=True)[1]]
        frames = self._free_frames(vm, node, len(want))
        ok, full = want[: len(frames)], want[len(frames) :]
        status[full] = -errno.ENOMEM
        if len(ok):
            self._remap(vm, proc, vpn[ok], frames)
            status[ok] = node
            vm.counters.guest_pages_moved += len(ok)
            ns = len(ok) * self.params.cost.guest_migrate_page_ns
            vm.counters.guest_mgmt_ns += ns
            vm.pending_ns += ns
            self._guest_flush_pages(vm, proc, len(ok))
        # pages that asked for a move we already did are reported at their node
        dup = present & (status == -errno.EFAULT)
        status[dup] = vm.node_of_frame(np.maximum(proc.pt[vpn[dup]], 0))
        self.oplog.append(("move_pages", vm_name, pid, node, len(ok)))
        return status

    def place_free(self, vm_name: str, pid: int, fast: BoolArray) -> int:
        """Oracle support: put the pages where ``fast`` is True on node 0, the rest
        on node 1, at no cost (no migration time, no flush), now and at first touch.

        Present pages on the wrong node are exchanged as far as free frames allow;
        pages not yet present get ``fast`` as their preferred node. Returns the
        present pages moved.
        """
        vm = self.vm(vm_name)
        proc = self.process(vm_name, pid)
        proc.preferred = np.where(fast, FAST, SLOW).astype(np.int8)
        moved = 0
        for node in (SLOW, FAST):  # free fast frames first
            present = np.flatnonzero(proc.pt >= 0)
            cur = vm.node_of_frame(proc.pt[present])
            want = present[(cur != node) & (proc.preferred[present] == node)]
            frames = self._free_frames(vm, node, len(want))
            if len(frames):
                self._remap(vm, proc, want[: len(frames)], frames)
                moved += len(frames)
        self.oplog.append(("place_free", vm_name, pid, moved))
        return moved

    def _remap(self, vm: EmuVm, proc: EmuProcess, vpns: I64, frames: I64) -> None:
        old = proc.pt[vpns]
        vm.f.pid[old] = -1
        vm.f.vpn[old] = -1
        proc.pt[vpns] = frames
        vm.f.pid[frames] = proc.pid
        vm.f.vpn[frames] = vpns
        self._back(vm, frames)
        proc._tier_cache = None

    # -------------------------------------------------- host-side operations
    def resize(self, vm_name: str, node: int, size_bytes: int) -> int:
        """virtio-mem: request ``size_bytes`` plugged on guest ``node``.

        Growing plugs blocks at once. Shrinking unplugs blocks from the top; used
        pages there are migrated by the guest to free frames of the same node,
        then of the other node; if none is free, unplugging stops short and the
        plugged size (libvirt's ``<current>``) stays above the request.
        Returns the plugged size in bytes.
        """
        vm = self.vm(vm_name)
        blk = self.params.block_bytes // PAGE_SIZE
        want = min(_round_up(max(0, size_bytes) // PAGE_SIZE, blk), vm.node_max[node])
        vm.requested[node] = want
        if want >= vm.plugged[node]:
            vm.plugged[node] = want
            self.oplog.append(("resize", vm_name, node, want))
            return want * PAGE_SIZE
        b = vm.node_base[node]
        region = np.arange(b + want, b + vm.plugged[node])
        used = region[vm.f.pid[region] >= 0]
        # free frames below the cut in this node, then in the other node
        below = np.flatnonzero(vm.f.pid[b : b + want] < 0) + b
        other = self._free_frames(vm, 1 - node, len(used))
        dest = np.concatenate([below, other])[: len(used)]
        moved = used[: len(dest)]
        stuck = used[len(dest) :]
        for pid in np.unique(vm.f.pid[moved]):
            sel = moved[vm.f.pid[moved] == pid]
            d = dest[: len(moved)][vm.f.pid[moved] == pid]
            proc = vm.procs[int(pid)]
            self._remap(vm, proc, vm.f.vpn[sel].copy(), d)
            self._guest_flush_pages(vm, proc, len(sel))
        vm.counters.unplug_pages_moved += len(moved)
        ns = len(moved) * self.params.cost.guest_migrate_page_ns
        vm.counters.guest_mgmt_ns += ns
        vm.pending_ns += ns
        new = want
        if len(stuck):
            new = _round_up(int(stuck.max()) - b + 1, blk)
        gone = np.arange(b + new, b + vm.plugged[node])
        backed = gone[vm.f.host[gone] >= 0]
        for hn in self.host_nodes:
            hn.used_pages -= int(np.count_nonzero(vm.f.host[backed] == hn.node))
        vm.f.host[backed] = -1
        self._host_remote_flush(vm, -(-len(gone) // blk) if len(backed) else 0)
        vm.plugged[node] = new
        self._invalidate_tiers(vm)
        self.oplog.append(("resize", vm_name, node, new))
        return new * PAGE_SIZE

    def host_scan_ept(self, vm_name: str) -> I64:
        """Host: test-and-clear the EPT A bits of a VM; gfns that were accessed.

        Clearing young bits needs kvm_flush_remote_tlbs() (one per
        ``scan_flush_pages`` region with an accessed page), charged to the VM.
        """
        vm = self.vm(vm_name)
        vm.track_ept_a = True
        acc = np.flatnonzero(vm.f.ept_a)
        vm.f.ept_a[:] = False
        cost = self.params.cost
        backed = int(np.count_nonzero(vm.f.host >= 0))
        vm.counters.host_mgmt_ns += backed * cost.ept_scan_ns
        regions = len(np.unique(acc // cost.scan_flush_pages))
        self._host_remote_flush(vm, regions)
        return acc.astype(np.int64)

    def host_migrate(self, vm_name: str, gfns: I64, host_node: int) -> int:
        """Host: move the backing of guest frames to ``host_node`` (host TPP).

        Each page's EPT entry is invalidated through the MMU notifier: one
        kvm_flush_remote_tlbs() per page. Returns the pages moved.
        """
        vm = self.vm(vm_name)
        g = np.asarray(gfns, np.int64)
        g = g[(vm.f.host[g] >= 0) & (vm.f.host[g] != host_node)]
        hn = self.host_nodes[host_node]
        g = g[: max(0, hn.capacity_pages - hn.used_pages)]
        for src in self.host_nodes:
            src.used_pages -= int(np.count_nonzero(vm.f.host[g] == src.node))
        vm.f.host[g] = host_node
        hn.used_pages += len(g)
        vm.counters.host_pages_moved += len(g)
        vm.counters.host_mgmt_ns += len(g) * self.params.cost.host_migrate_page_ns
        self._host_remote_flush(vm, len(g))
        self._invalidate_tiers(vm)
        self.oplog.append(("host_migrate", vm_name, host_node, len(g)))
        return len(g)

    def host_tier_of_frames(self, vm_name: str) -> npt.NDArray[np.int8]:
        vm = self.vm(vm_name)
        out = self._host_tier[np.maximum(vm.f.host, 0)]
        out[vm.f.host < 0] = -1
        return out

    def pml_drain(self, vm_name: str) -> I64:
        """Host: the gfns logged dirty by PML since the last drain (D bits reset)."""
        vm = self.vm(vm_name)
        vm.track_pml = True
        out = np.concatenate(vm.pml_log) if vm.pml_log else np.empty(0, np.int64)
        vm.pml_log.clear()
        vm.f.ept_d[:] = False
        # re-arming D bits write-protects again: one remote flush per drain
        self._host_remote_flush(vm, 1 if len(out) else 0)
        return out

    # ------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        """Raise InvariantError if any page is lost, duplicated or misaccounted."""
        host_used = [0] * len(self.host_nodes)
        for vm in self.vms.values():
            if vm._frames is None:
                continue
            seen = 0
            for proc in vm.procs.values():
                mapped = np.flatnonzero(proc.pt >= 0)
                g = proc.pt[mapped]
                if len(np.unique(g)) != len(g):
                    raise InvariantError(f"{vm.name}/{proc.pid}: a frame mapped twice")
                if np.any(vm.f.pid[g] != proc.pid) or np.any(vm.f.vpn[g] != mapped):
                    raise InvariantError(f"{vm.name}/{proc.pid}: reverse map broken")
                if np.any(vm.f.host[g] < 0):
                    raise InvariantError(f"{vm.name}/{proc.pid}: used frame unbacked")
                seen += len(g)
            if seen != int(np.count_nonzero(vm.f.pid >= 0)):
                raise InvariantError(f"{vm.name}: frames owned by no process")
            for node in (FAST, SLOW):
                b = vm.node_base[node]
                tail = vm.f.pid[b + vm.plugged[node] : b + vm.node_max[node]]
                if np.any(tail >= 0):
                    raise InvariantError(f"{vm.name}: page in unplugged memory")
                htail = vm.f.host[b + vm.plugged[node] : b + vm.node_max[node]]
                if np.any(htail >= 0):
                    raise InvariantError(f"{vm.name}: unplugged memory still backed")
            for hn in self.host_nodes:
                host_used[hn.node] += int(np.count_nonzero(vm.f.host == hn.node))
        for hn in self.host_nodes:
            if host_used[hn.node] != hn.used_pages:
                raise InvariantError(
                    f"host node {hn.node}: {hn.used_pages} pages accounted, "
                    f"{host_used[hn.node]} backed"
                )
            if hn.used_pages > hn.capacity_pages:
                # A full node spills to the other; when both are full the
                # emulated host is overcommitted (a real one would OOM).
                raise InvariantError(
                    f"host node {hn.node}: {hn.used_pages} pages backed, "
                    f"capacity {hn.capacity_pages}"
                )


def _round_up(n: int, blk: int) -> int:
    return -(-n // blk) * blk
