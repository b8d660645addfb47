"""The access-tracking sources of the emulated machine, guest and host side.

Guest: PEBS / IBS (sampled LLC misses with latency weights, into a bounded
ring), ``page-fault`` (NUMA hinting faults on protected pages) and
``soft-dirty`` (pages *written* since the last scan, as Linux's soft-dirty bit:
``clear_refs 4`` write-protects, the first write to each page faults and sets
the bit, a pagemap read reports it; reads leave no trace). Host: EPT accessed bits
(``host_scan_ept``) and the PML dirty log (``pml_drain``). Each source charges
its CPU cost and its TLB flushes where the real mechanism pays them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from emu.machine.flush import Flushes
from emu.machine.state import (
    FAST,
    PAGE_SIZE,
    EmuProcess,
    EmuVm,
)
from hypertier_common.arrays import I32, I64, U32, U64, BoolArray

__all__ = ["SOURCES", "Tracking"]

# The guest sample sources (agent_guest.backend.SampleSource values).
SOURCES = ("pebs", "ibs", "page-fault", "soft-dirty")
_CYCLES_PER_NS = 2.5


def _written_vpns(vpn: I32, write_fraction: float, writes: BoolArray | None) -> I64:
    """The distinct pages a chunk's accesses wrote: the workload's recorded store
    flags where it has them, else every ``1 / write_fraction``-th access."""
    if writes is not None:
        w = vpn[writes]
    elif write_fraction > 0:
        w = vpn[:: max(1, round(1 / write_fraction))]
    else:
        w = vpn[:0]
    return np.unique(w).astype(np.int64)


class Tracking(Flushes):
    """Sample sources (guest) and EPT.A / PML scans (host)."""

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
        if source not in SOURCES:
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
    ) -> tuple[I32, U64, U32, int]:
        """Samples gathered since the last drain: (pid, addr, weight, lost).

        For "soft-dirty" this is the scan itself (pages written since the last
        scan, bits cleared and pages write-protected again: one flush per
        process); for "page-fault" it also re-protects the next slice
        of each target process (NUMA-balancing-style scan of ``dt_s`` worth).
        """
        vm = self.vm(vm_name)
        cost = self.params.cost
        targets = [
            p
            for p in vm.procs.values()
            if not vm.sample_pids or p.pid in vm.sample_pids
        ]
        if vm.sampling == "soft-dirty":
            for p in targets:
                pages = np.flatnonzero(p.soft_dirty)
                p.soft_dirty[:] = False
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
                self._guest_flush_all(vm, p, 1)  # clear_refs: flush_tlb_mm()
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
                # change_prot_numa() works in 256 MiB steps, one flush each
                ranges = max(1, k // 65536)
                self._guest_flush_range(vm, p, -(-k // ranges), times=ranges)
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

    def _track(
        self,
        vm: EmuVm,
        proc: EmuProcess,
        vpn: I32,
        counts: I64,
        tiers: npt.NDArray[np.int8],
        write_fraction: float,
        writes: BoolArray | None,
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
        elif vm.sampling == "soft-dirty":
            w = _written_vpns(vpn, write_fraction, writes)
            new = w[~proc.soft_dirty[w]]
            # the first write to a write-protected page faults and sets the bit
            proc.soft_dirty[new] = True
            ns = len(new) * cost.wp_fault_ns
            vm.counters.guest_mgmt_ns += ns
            vm.pending_ns += ns

    def _ring_push(self, vm: EmuVm, pid: int, addr: U64, weight: U32) -> None:
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
            wg = proc.pt[_written_vpns(vpn, wf, writes)]
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
