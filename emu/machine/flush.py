"""TLB-flush accounting: which flushes an operation causes, counted per VM.

Guest flushes follow the guest kernel (single-page flushes, full flushes above
the flush ceiling, flush IPIs to the other vCPUs); host flushes follow KVM
(``kvm_flush_remote_tlbs()``: INVEPT on every vCPU). Each flush also leaves
work for the cost model: cold TLBs after a full flush, IPI time.
"""

from __future__ import annotations

from emu.machine.memory import Memory
from emu.machine.state import EmuProcess, EmuVm

__all__ = ["Flushes"]


class Flushes(Memory):
    """Flush counters and their pending costs (see :class:`VmCounters`)."""

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
