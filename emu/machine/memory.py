"""Guest memory of the emulated machine: lookups, first-touch allocation, backing.

:class:`Memory` is the base of :class:`emu.machine.world.World`: it owns the
state (host nodes, VMs, processes) and the allocator every other part uses.
Guest frames are allocated on first touch (node 0 first, then node 1, like
Linux's default policy) and backed by host memory on the first EPT violation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from emu.clock import FakeClock
from emu.machine.params import MemoryProfile, Params
from emu.machine.state import (
    FAST,
    SLOW,
    EmuProcess,
    EmuVm,
    HostNodeState,
    NoSuchProcessError,
    NoSuchVmError,
)
from hypertier_common.arrays import I64

__all__ = ["Memory"]


class Memory:
    """World state and the page allocator (see World for the constructor)."""

    params: Params
    mem: MemoryProfile
    rng: np.random.Generator
    clock: FakeClock
    host_nodes: list[HostNodeState]
    vms: dict[str, EmuVm]
    oplog: list[tuple[object, ...]]
    events: list[tuple[str, str]]  # (vm, "started" | "stopped")
    metadata: dict[str, str]
    _host_tier: npt.NDArray[np.int8]

    def vm(self, name: str) -> EmuVm:
        try:
            return self.vms[name]
        except KeyError:
            raise NoSuchVmError(name) from None

    def process(self, vm_name: str, pid: int) -> EmuProcess:
        proc = self.vm(vm_name).procs.get(pid)
        if proc is None or not proc.alive:
            raise NoSuchProcessError(pid)
        return proc

    def node_reserve_pages(self, vm: EmuVm, node: int) -> int:
        """Free frames the guest kernel keeps on ``node`` (``node_reserve_pct``)."""
        return int(vm.plugged[node] * self.params.node_reserve_pct / 100.0)

    def _free_frames(self, vm: EmuVm, node: int, k: int) -> I64:
        """Up to ``k`` free frames of ``node`` above the kernel's reserve."""
        b = vm.node_base[node]
        free = np.flatnonzero(vm.f.pid[b : b + vm.plugged[node]] < 0)
        free = free[: max(0, len(free) - self.node_reserve_pages(vm, node))]
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
            # guest OOM: the kernel would kill; the pages stay unmapped and the
            # oplog records the failure so a test sees it
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

    def _remap(self, vm: EmuVm, proc: EmuProcess, vpns: I64, frames: I64) -> None:
        old = proc.pt[vpns]
        vm.f.pid[old] = -1
        vm.f.vpn[old] = -1
        proc.pt[vpns] = frames
        vm.f.pid[frames] = proc.pid
        vm.f.vpn[frames] = vpns
        self._back(vm, frames)
        proc._tier_cache = None
