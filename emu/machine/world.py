"""The emulated machine: host NUMA tiers, VMs with two guest nodes, processes.

:class:`World` is the whole machine and its public surface is listed in its
docstring; the parts live in one module each (:mod:`emu.machine.state` data,
:mod:`~emu.machine.memory` allocation, :mod:`~emu.machine.flush` TLB-flush
accounting, :mod:`~emu.machine.tracking` sample sources,
:mod:`~emu.machine.execution` the cost model of running workloads,
:mod:`~emu.machine.invariants`). ``emu.backends.guest.EmuGuestBackend`` and
``emu.backends.host.EmuHostBackend`` are views onto a World, so a host-side
resize is visible inside the guest.
"""

from __future__ import annotations

import errno
import itertools
import math
import uuid as uuidlib

import numpy as np
import numpy.typing as npt

from emu.clock import FakeClock
from emu.machine.execution import Execution
from emu.machine.invariants import check_invariants
from emu.machine.params import Params
from emu.machine.state import (
    FAST,
    PAGE_SIZE,
    SLOW,
    EmuProcess,
    EmuVm,
    HostNodeState,
    round_up,
)
from emu.workloads.synthetic import Workload
from hypertier_common.arrays import I32, I64, U64, BoolArray

__all__ = ["World"]

_VMA_BASE = 0x7F00_0000_0000


class World(Execution):
    """The whole emulated machine. Deterministic for a given seed and call order.

    Public surface (everything else is private to the emulator):

    Set-up and state
        ``add_vm``, ``remove_vm``, ``spawn``, ``kill``; ``vm(name)`` ->
        :class:`EmuVm` (``counters``, ``plugged``, ``procs``), ``process(vm,
        pid)`` -> :class:`EmuProcess`; ``vms``, ``host_nodes``, ``params``,
        ``clock`` (advancing it runs the workloads), ``oplog`` (every
        state-changing call, in order), ``events`` (VM started/stopped),
        ``metadata`` (per-VM domain metadata XML).
    Guest operations (what a guest kernel offers its agent)
        ``start_sampling``, ``stop_sampling``, ``drain_samples``,
        ``page_nodes`` and ``move_pages`` (move_pages(2) with per-page
        statuses), ``page_tiers`` (host tier backing each page).
    Host operations (what KVM and libvirt offer the host)
        ``resize`` (virtio-mem), ``host_scan_ept``, ``host_migrate``,
        ``host_tier_of_frames``, ``pml_drain``.
    Evaluation support
        ``place_free`` (the oracle's free placement), ``advance`` (the clock
        listener), ``check_invariants``.
    """

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
        fmax = round_up(max(fast_max_bytes or 0, fast_bytes) // PAGE_SIZE, blk)
        smax = round_up(max(slow_max_bytes or 0, slow_bytes) // PAGE_SIZE, blk)
        fast = min(round_up(fast_bytes // PAGE_SIZE, blk), fmax)
        slow = min(round_up(slow_bytes // PAGE_SIZE, blk), smax)
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
            soft_dirty=np.zeros(n, bool),
            protected=np.zeros(n, bool),
        )
        vm.procs[pid] = proc
        if prefault:
            self._fault_in(vm, proc, np.arange(n, dtype=np.int64))
        self.oplog.append(("spawn", vm_name, pid, n))
        return pid

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

    def page_nodes(self, vm_name: str, pid: int, addrs: U64) -> I32:
        """move_pages(2) with nodes=NULL: node per page, -EFAULT/-ENOENT otherwise."""
        vm = self.vm(vm_name)
        proc = self.process(vm_name, pid)
        vpn, inside = self._vpns(proc, addrs)
        gfn = proc.pt[vpn]
        status = np.where(gfn >= 0, vm.node_of_frame(np.maximum(gfn, 0)), -errno.ENOENT)
        return np.where(inside, status, -errno.EFAULT).astype(np.int32)

    def node_bytes(self, vm_name: str, pid: int) -> dict[int, int]:
        """/proc/pid/numa_maps: the process's present pages per guest node, in
        bytes; the page-table walk is billed to the VM's vCPUs."""
        vm = self.vm(vm_name)
        proc = self.process(vm_name, pid)
        gfn = proc.pt[proc.pt >= 0]
        ns = len(gfn) * self.params.cost.numa_maps_page_ns
        vm.counters.guest_mgmt_ns += ns
        vm.pending_ns += ns
        count = np.bincount(vm.node_of_frame(gfn), minlength=2)
        return {n: int(c) * PAGE_SIZE for n, c in enumerate(count.tolist()) if c}

    def move_pages(self, vm_name: str, pid: int, addrs: U64, node: int) -> I32:
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
            self._guest_flush_migration(vm, proc, len(ok))
        # pages that asked for a move we already did are reported at their node
        dup = present & (status == -errno.EFAULT)
        status[dup] = vm.node_of_frame(np.maximum(proc.pt[vpn[dup]], 0))
        self.oplog.append(("move_pages", vm_name, pid, node, len(ok)))
        return status

    def _vpns(self, proc: EmuProcess, addrs: U64) -> tuple[I64, BoolArray]:
        """The page index of each address in ``proc``'s mapping (0 outside it),
        and whether it is inside."""
        a = np.asarray(addrs, dtype=np.uint64)
        off = a.astype(np.int64) - proc.base_addr
        vpn = off // PAGE_SIZE
        inside = (off >= 0) & (vpn < proc.npages)
        return np.where(inside, vpn, 0), inside

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

    def resize(self, vm_name: str, node: int, size_bytes: int) -> int:
        """virtio-mem: request ``size_bytes`` plugged on guest ``node``.

        Growing plugs blocks at once. Shrinking unplugs blocks from the top; used
        pages there are migrated by the guest to free frames of the same node,
        then of the other node; if none is free, unplugging stops short and the
        plugged size (libvirt's ``<current>``) stays above the request, and the
        guest's driver tries again ``params.unplug_retry_min_s`` later,
        doubling to ``unplug_retry_max_s`` (:meth:`advance`).
        Returns the plugged size in bytes.
        """
        vm = self.vm(vm_name)
        blk = self.params.block_bytes // PAGE_SIZE
        want = min(round_up(max(0, size_bytes) // PAGE_SIZE, blk), vm.node_max[node])
        vm.requested[node] = want
        vm.unplug_retry_s[node] = self.params.unplug_retry_min_s
        if want >= vm.plugged[node]:
            vm.plugged[node] = want
            vm.unplug_retry_at[node] = math.inf
            self.oplog.append(("resize", vm_name, node, want))
            return want * PAGE_SIZE
        new = self._unplug(vm, node)
        self.oplog.append(("resize", vm_name, node, new))
        return new * PAGE_SIZE

    def advance(self, dt_s: float) -> None:
        """Run the workloads for ``dt_s`` (clock listener), then the guest
        drivers' unplug retries that came due."""
        super().advance(dt_s)
        now = self.clock.monotonic()
        for vm in self.vms.values():
            for node in (0, 1):
                if vm.unplug_retry_at[node] <= now:
                    vm.unplug_retry_s[node] = min(
                        2.0 * vm.unplug_retry_s[node], self.params.unplug_retry_max_s
                    )
                    new = self._unplug(vm, node)
                    self.oplog.append(("unplug_retry", vm.name, node, new))

    def _unplug(self, vm: EmuVm, node: int) -> int:
        """Unplug ``vm``'s ``node`` down to its request, as far as its used
        pages can move; if they cannot all, try again after the back-off.
        Returns the plugged size in pages."""
        blk = self.params.block_bytes // PAGE_SIZE
        want = vm.requested[node]
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
            self._guest_flush_migration(vm, proc, len(sel))
        vm.counters.unplug_pages_moved += len(moved)
        ns = len(moved) * self.params.cost.guest_migrate_page_ns
        vm.counters.guest_mgmt_ns += ns
        vm.pending_ns += ns
        new = want
        if len(stuck):
            new = round_up(int(stuck.max()) - b + 1, blk)
        gone = np.arange(b + new, b + vm.plugged[node])
        backed = gone[vm.f.host[gone] >= 0]
        for hn in self.host_nodes:
            hn.used_pages -= int(np.count_nonzero(vm.f.host[backed] == hn.node))
        vm.f.host[backed] = -1
        self._host_remote_flush(vm, -(-len(gone) // blk) if len(backed) else 0)
        vm.plugged[node] = new
        vm.unplug_retry_at[node] = (
            self.clock.monotonic() + vm.unplug_retry_s[node] if new > want else math.inf
        )
        self._invalidate_tiers(vm)
        return new

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

    def check_invariants(self) -> None:
        """Raise InvariantError if any page is lost, duplicated or misaccounted."""
        check_invariants(self)
