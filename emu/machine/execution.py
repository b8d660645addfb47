"""Running workloads on the emulated machine, and what each access costs.

Workloads run in chunks when time advances; each chunk is costed (memory
latency per tier, TLB misses with warm or cold 2D walks, slow-tier bandwidth
shared by the VMs, management time owed by the vCPUs) and feeds the tracking
sources. The parameters are in :mod:`emu.machine.params`.
"""

from __future__ import annotations

import numpy as np

from emu.machine.state import FAST, EmuProcess, EmuVm
from emu.machine.tracking import Tracking

__all__ = ["Execution"]

# Accesses over which the TLB's reach is estimated: many times the accesses
# that touch a TLB's worth of pages, and a fixed number, so the estimate does
# not depend on how a run is cut into chunks (which management time changes).
# Chunks are whole windows.
_TLB_WINDOW = 1 << 16
_CHUNK = 16 * _TLB_WINDOW


def _tlb_reach(vpn: np.ndarray, npages: int, entries: int) -> tuple[float, float]:
    """(TLB hits, mean distinct pages per window) of the accesses ``vpn``.

    Independent-reference estimate per window of ``_TLB_WINDOW`` accesses (a
    chunk is whole windows but for a process's last accesses, which the last
    window takes): the ``entries`` most accessed pages of the window hit, the
    others miss. Only the pages a window touched are ranked (a partition over
    them, not over the footprint).
    """
    n = int(vpn.shape[0])
    nwin = max(1, n // _TLB_WINDOW)
    hits = 0.0
    distinct = 0
    for i in range(nwin):
        lo = i * _TLB_WINDOW
        hi = n if i == nwin - 1 else lo + _TLB_WINDOW
        counts = np.bincount(vpn[lo:hi], minlength=npages)
        touched = counts[counts > 0]
        k = int(touched.shape[0])
        distinct += k
        if k <= entries:
            hits += hi - lo
        else:
            hits += float(np.partition(touched, k - entries)[k - entries :].sum())
    return hits, distinct / nwin


def _first_touch_order(vpn: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """The pages ``missing`` marks, in the order the accesses ``vpn`` first
    touch them (first touch allocates in that order: the first ones get the
    fast node while it has room)."""
    pages, first = np.unique(vpn[missing[vpn]], return_index=True)
    out: np.ndarray = pages[np.argsort(first, kind="stable")].astype(np.int64)
    return out


class Execution(Tracking):
    """The clock listener that runs every VM's processes."""

    def advance(self, dt_s: float) -> None:
        """Run every VM's workloads for ``dt_s`` of virtual time (clock listener)."""
        for vm in self.vms.values():
            vm.budget_s += dt_s
            self._run_vm(vm)

    def _run_vm(self, vm: EmuVm) -> None:
        while vm.budget_s > 0:
            running = [p for p in vm.procs.values() if p.running]
            if not running:
                # idle: management work runs on idle vCPUs and delays nothing
                # (its CPU time was counted in guest_mgmt_ns when charged)
                vm.vtime_s += vm.budget_s
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
        fit = vm.budget_s * 1e9 / max(vm.ns_per_access, 1e-3)
        windows = max(1, round(fit / _TLB_WINDOW))
        left = proc.target_accesses - proc.done_accesses
        n = min(windows * _TLB_WINDOW, _CHUNK, left)
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
            self._fault_in(vm, proc, _first_touch_order(vpn, missing))
        tiers = self._page_tiers(vm, proc)
        fast_n = int(counts[tiers == FAST].sum())
        slow_n = n - fast_n
        mem = self.mem
        tlb = self.params.tlb
        # TLB: per window of _TLB_WINDOW accesses, the hottest E pages hit
        hits, distinct = _tlb_reach(vpn, proc.npages, tlb.entries)
        misses = n - hits
        distinct /= max(1, proc.threads)
        cold = min(float(n), vm.pending_full_flushes * min(tlb.entries, distinct))
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
            self._track(
                vm, proc, vpn, counts, tiers, wl.write_fraction, wl.last_writes()
            )
        if vm.track_ept_a or vm.track_pml:
            self._track_host(
                vm, proc, vpn, touched, wl.write_fraction, wl.last_writes()
            )
        vm.ns_per_access = (mem_ns + walk_ns) / cpus / n
        t_s = t_ns * 1e-9
        if proc.done_accesses >= proc.target_accesses:
            proc.finished_at_s = vm.vtime_s + t_s
        return t_s
