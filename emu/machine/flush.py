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

    def _guest_flush_migration(self, vm: EmuVm, proc: EmuProcess, npages: int) -> None:
        """Flushes of the guest kernel's migrate_pages() for ``npages`` pages.

        On a process whose mm runs on other vCPUs too, migrate_pages_batch()
        unmaps up to ``migrate_batch_pages`` pages (NR_MAX_BATCHED_MIGRATION)
        and then flushes once (try_to_unmap_flush -> arch_tlbbatch_flush: a
        full flush, IPIs to the other vCPUs), since Linux 6.4 (commit
        7e12beb8ca2a). A process on one vCPU is not deferred
        (arch_tlbbatch_should_defer): one single-page flush per page, no IPI.
        """
        if npages <= 0:
            return
        cpus = min(proc.threads, vm.vcpus)
        batch = self.params.cost.migrate_batch_pages
        if cpus == 1 or batch == 1:
            # each page's unmap flushes its own entry (ptep_clear_flush)
            self._guest_flush_range(vm, proc, 1, times=npages)
            return
        self._guest_flush_all(vm, proc, -(-npages // batch))

    def _guest_flush_range(
        self, vm: EmuVm, proc: EmuProcess, npages: int, times: int = 1
    ) -> None:
        """``times`` flush_tlb_mm_range() calls of ``npages`` pages each.

        Up to ``flush_ceiling_pages`` (x86 tlb_single_page_flush_ceiling) a
        range is flushed page by page (nr_tlb_local_flush_one counts pages),
        above it in full (nr_tlb_local_flush_all); either way one flush IPI
        round (nr_tlb_remote_flush) per call when the mm runs on other vCPUs.
        """
        if npages <= 0 or times <= 0:
            return
        if npages > self.params.cost.flush_ceiling_pages:
            self._guest_flush_all(vm, proc, times)
            return
        c = vm.counters
        cpus = min(proc.threads, vm.vcpus)
        c.tlb_local_flush_one += npages * times
        vm.pending_one_flushes += npages * times * cpus
        self._guest_flush_ipi(vm, cpus, times)

    def _guest_flush_all(self, vm: EmuVm, proc: EmuProcess, times: int) -> None:
        """``times`` full flushes of the process's TLB entries on its vCPUs."""
        if times <= 0:
            return
        cpus = min(proc.threads, vm.vcpus)
        vm.counters.tlb_local_flush_all += times
        vm.pending_full_flushes += times * cpus
        self._guest_flush_ipi(vm, cpus, times)

    def _guest_flush_ipi(self, vm: EmuVm, cpus: int, times: int) -> None:
        if cpus > 1:
            c = vm.counters
            c.tlb_remote_flush += times
            c.tlb_flush += times  # PV flush of a preempted vCPU (approximation)
            vm.pending_ns += times * self.params.cost.guest_remote_flush_ns

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
