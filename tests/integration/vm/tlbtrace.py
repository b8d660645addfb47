"""Count the guest's TLB flushes by reason: a tracefs histogram trigger on the
``tlb:tlb_flush`` tracepoint (Documentation/trace/histogram.rst).
"""

from __future__ import annotations

import re

from .guestlink import GuestLink

TRACE = "/sys/kernel/tracing/events/tlb/tlb_flush"
# On the guest's kernel command line: the tracepoint is enabled at boot, before
# the second vCPU runs, so :func:`start` flips no static key. Enabling it later
# patches the running kernel's text across both vCPUs, and under QEMU TCG that
# can hang the vCPU that patches (seen: "soft lockup - CPU#0 stuck for 22s!
# [sh]" on the echo into the trigger file, the guest lost for the whole run).
# Records also go to the ring buffer, which wraps: a few hundred bytes per flush.
BOOT_PARAM = "trace_event=tlb:tlb_flush"
# x86 enum tlb_flush_reason (arch/x86/include/asm/tlbflush.h, v6.1, unchanged to 6.12)
TLB_REASONS = {
    0: "task_switch",
    1: "remote_shootdown",
    2: "local_shootdown",
    3: "local_mm_shootdown",
    4: "remote_send_ipi",
}


def start(link: GuestLink) -> None:
    """Install the histogram trigger keyed by reason (on a guest booted with
    :data:`BOOT_PARAM`, this adds a trigger to an event already on)."""
    link.sh(f"echo 'hist:keys=reason' > {TRACE}/trigger")


def read(link: GuestLink) -> dict[str, int]:
    """Flushes since :func:`start` by reason name.

    The trigger stays: removing it unregisters a tracepoint probe, which patches
    the running kernel's text (static key and static call), and under QEMU TCG
    with two vCPUs such patching can oops the guest while it still works (seen
    once in ttwu_do_activate). The VM is destroyed after the count anyway."""
    out = link.sh(f"cat {TRACE}/hist")
    counts: dict[str, int] = {}
    for m in re.finditer(r"reason:\s*(\d+)\s*\}\s*hitcount:\s*(\d+)", out):
        counts[TLB_REASONS.get(int(m.group(1)), m.group(1))] = int(m.group(2))
    return counts
