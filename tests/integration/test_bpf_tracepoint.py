"""The raw-eBPF tracepoint counter against the kernel's own perf count.

Needs root (CAP_BPF + CAP_PERFMON) and tracefs; runs on this CI machine.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
import subprocess
from pathlib import Path

import pytest

from agent_guest import perf_abi
from agent_guest.errors import AccessDenied, Unsupported
from agent_guest.linux_bpf import TLB_FLUSH_REASONS, TracepointCounter

pytestmark = pytest.mark.integration

TRACEFS = Path("/sys/kernel/tracing")


def _need_tracefs() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for bpf(2) and perf tracepoint events")
    if not (TRACEFS / "events").is_dir():
        # tests may mount it, as the guest agent's unit does at start
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
    if not (TRACEFS / "events" / "tlb" / "tlb_flush").is_dir():
        pytest.skip(f"tracepoint tlb:tlb_flush missing under {TRACEFS}/events")


def _perf_count_fds(tp_id: int) -> list[int]:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = perf_abi.encode_attr(
        type_=perf_abi.TYPE_TRACEPOINT,
        config=tp_id,
        sample_period=0,
        sample_type=0,
        exclude_kernel=False,
    )
    buf = ctypes.create_string_buffer(attr, len(attr))
    fds = []
    for cpu in range(os.cpu_count() or 1):
        fd = libc.syscall(298, buf, -1, cpu, -1, 8)
        assert fd >= 0, os.strerror(ctypes.get_errno())
        fds.append(fd)
    return fds


def _churn(rounds: int) -> None:
    """Map, touch and unmap memory: each munmap flushes this mm's TLB entries."""
    for _ in range(rounds):
        m = mmap.mmap(-1, 1 << 20)
        m[:: mmap.PAGESIZE] = b"x" * (len(m) // mmap.PAGESIZE)
        m.close()


def test_bpf_counts_match_perf_counting_of_the_same_tracepoint() -> None:
    _need_tracefs()
    tp_id = int((TRACEFS / "events/tlb/tlb_flush/id").read_text())
    fds = _perf_count_fds(tp_id)
    try:
        with TracepointCounter("tlb:tlb_flush", "reason", tracefs=TRACEFS) as counter:
            for fd in fds:
                fcntl.ioctl(fd, perf_abi.IOC_ENABLE, 0)
            _churn(300)
            for fd in fds:
                fcntl.ioctl(fd, perf_abi.IOC_DISABLE, 0)
            by_reason = counter.read()
        perf_total = sum(struct.unpack("<Q", os.read(fd, 8))[0] for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)
    bpf_total = sum(by_reason.values())
    named = {TLB_FLUSH_REASONS.get(k, str(k)): v for k, v in by_reason.items() if v}
    print(f"tlb:tlb_flush by reason (BPF): {named}; perf count: {perf_total}")
    assert by_reason[3] >= 300  # one local mm shootdown per munmap at least
    assert perf_total >= 300
    # the BPF program was attached before and read after the perf window
    assert bpf_total >= perf_total * 0.95


def test_missing_tracepoint_is_unsupported_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="tracefs mounted"):
        TracepointCounter("tlb:no_such_event", tracefs=tmp_path)


def test_unprivileged_load_is_access_denied() -> None:
    _need_tracefs()
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try to load
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            TracepointCounter("tlb:tlb_flush", tracefs=TRACEFS)
            code = 1
        except AccessDenied:
            code = 0
        except Exception:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
