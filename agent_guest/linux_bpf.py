"""Count a tracepoint's events by one integer field with a raw eBPF program.

Used for the guest's ``tlb:tlb_flush`` telemetry (counts per flush reason). The
program is assembled here (no compiler, no kernel headers: bcc needs both, and
neither exists for every guest kernel), loaded with bpf(2) as a
BPF_PROG_TYPE_TRACEPOINT program and attached with perf_event_open(2) +
PERF_EVENT_IOC_SET_BPF. See bpf(2), Documentation/bpf/instruction-set.rst and
the tracepoint's ``format`` file in tracefs for the field offsets.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import struct
from pathlib import Path

from agent_guest import perf_abi
from agent_guest.errors import AccessDenied, BackendError, Unsupported

__all__ = ["TLB_FLUSH_REASONS", "TracepointCounter"]

_NR_BPF = 321  # x86-64
_NR_PERF_EVENT_OPEN = 298
_BPF_MAP_CREATE, _BPF_MAP_LOOKUP_ELEM, _BPF_PROG_LOAD = 0, 1, 5
_BPF_MAP_TYPE_ARRAY = 2
_BPF_PROG_TYPE_TRACEPOINT = 5
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_FLAG_FD_CLOEXEC = 8
_ATTR_BYTES = 128

# include/linux/mm_types.h enum tlb_flush_reason
TLB_FLUSH_REASONS = {
    0: "task_switch",
    1: "remote_shootdown",
    2: "local_shootdown",
    3: "local_mm_shootdown",
    4: "remote_send_ipi",
    5: "remote_wrong_cpu",
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _program(map_fd: int, field_off: int, slots: int) -> bytes:
    """r = ctx->field; if r < slots: atomically counts[r] += 1; return 1."""
    return b"".join(
        (
            _insn(0xBF, dst=6, src=1),  # r6 = r1 (ctx)
            _insn(0x61, dst=1, src=6, off=field_off),  # r1 = *(u32 *)(r6 + off)
            _insn(0x35, dst=1, off=9, imm=slots),  # if r1 >= slots goto out
            _insn(0x63, dst=10, src=1, off=-4),  # *(u32 *)(r10 - 4) = r1
            _insn(0xBF, dst=2, src=10),  # r2 = r10
            _insn(0x07, dst=2, imm=-4),  # r2 += -4
            _insn(0x18, dst=1, src=1, imm=map_fd),  # r1 = map (ld_imm64, pseudo fd)
            _insn(0x00),
            _insn(0x85, imm=1),  # call bpf_map_lookup_elem
            _insn(0x15, dst=0, off=2, imm=0),  # if r0 == 0 goto out
            _insn(0xB7, dst=1, imm=1),  # r1 = 1
            _insn(0xDB, dst=0, src=1, off=0, imm=0),  # lock *(u64 *)(r0) += r1
            # out: r0 = 1. Returning 0 would filter the event out of every
            # perf user of this tracepoint (perf_trace_run_bpf_submit), so an
            # operator's `perf stat -e tlb:tlb_flush` would read 0.
            _insn(0xB7, dst=0, imm=1),
            _insn(0x95),  # exit
        )
    )


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = _libc.syscall(_NR_BPF, cmd, attr, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def _field_offset(fmt: str, field: str) -> int:
    m = re.search(
        rf"field:[^;]*\b{re.escape(field)};\s*offset:(\d+);\s*size:(\d+);", fmt
    )
    if m is None:
        raise BackendError(f"tracepoint has no field {field!r}")
    if int(m.group(2)) != 4:
        raise BackendError(f"field {field!r} is {m.group(2)} bytes; only 4 supported")
    return int(m.group(1))


class TracepointCounter:
    """Counts ``category:name`` events per value of an int ``field`` (0..slots-1).

    Raises Unsupported when tracefs or the tracepoint is missing, AccessDenied
    without CAP_BPF/CAP_PERFMON (or root).
    """

    def __init__(
        self,
        tracepoint: str = "tlb:tlb_flush",
        field: str = "reason",
        slots: int = 8,
        tracefs: Path = Path("/sys/kernel/tracing"),
    ) -> None:
        self.tracepoint = tracepoint
        self._fds: list[int] = []
        category, _, name = tracepoint.partition(":")
        event_dir = tracefs / "events" / category / name
        try:
            tp_id = int((event_dir / "id").read_text())
            off = _field_offset((event_dir / "format").read_text(), field)
        except FileNotFoundError as err:
            raise Unsupported(
                f"tracepoint {tracepoint}",
                f"{event_dir} missing (is tracefs mounted at {tracefs}? "
                "mount -t tracefs nodev /sys/kernel/tracing)",
            ) from err
        except PermissionError as err:
            raise AccessDenied(f"reading {event_dir}", "run as root") from err
        self._slots = slots
        try:
            mattr = ctypes.create_string_buffer(
                struct.pack("<IIII", _BPF_MAP_TYPE_ARRAY, 4, 8, slots), _ATTR_BYTES
            )
            self._map_fd = _bpf(_BPF_MAP_CREATE, mattr)
            self._fds.append(self._map_fd)
            insns = _program(self._map_fd, off, slots)
            ibuf = ctypes.create_string_buffer(insns, len(insns))
            lic = ctypes.create_string_buffer(b"GPL")
            log = ctypes.create_string_buffer(8192)
            pattr = ctypes.create_string_buffer(
                struct.pack(
                    "<IIQQIIQ",
                    _BPF_PROG_TYPE_TRACEPOINT,
                    len(insns) // 8,
                    ctypes.addressof(ibuf),
                    ctypes.addressof(lic),
                    1,
                    len(log),
                    ctypes.addressof(log),
                ),
                _ATTR_BYTES,
            )
            try:
                prog_fd = _bpf(_BPF_PROG_LOAD, pattr)
            except OSError as err:
                why = log.value.decode(errors="replace")
                raise BackendError(f"BPF verifier rejected the counter: {why}") from err
            self._fds.append(prog_fd)
            attr = perf_abi.encode_attr(
                type_=perf_abi.TYPE_TRACEPOINT,
                config=tp_id,
                sample_period=1,
                sample_type=perf_abi.SAMPLE_RAW,
                exclude_kernel=False,
            )
            abuf = ctypes.create_string_buffer(attr, len(attr))
            # One event suffices: programs hang off the tracepoint, for all CPUs.
            pfd = _libc.syscall(
                _NR_PERF_EVENT_OPEN, abuf, -1, 0, -1, _PERF_FLAG_FD_CLOEXEC
            )
            if pfd < 0:
                err_no = ctypes.get_errno()
                raise OSError(err_no, os.strerror(err_no))
            self._fds.append(int(pfd))
            fcntl.ioctl(int(pfd), _PERF_EVENT_IOC_SET_BPF, prog_fd)
            fcntl.ioctl(int(pfd), perf_abi.IOC_ENABLE, 0)
        except OSError as err:
            self.close()
            if err.errno in (errno.EPERM, errno.EACCES):
                raise AccessDenied(
                    f"BPF counter on {tracepoint}", "needs CAP_BPF and CAP_PERFMON"
                ) from err
            if err.errno in (
                errno.ENOSYS,
                errno.EINVAL,
                errno.ENOENT,
                errno.EOPNOTSUPP,
            ):
                raise Unsupported(
                    f"BPF on {tracepoint}", os.strerror(err.errno)
                ) from err
            raise BackendError(f"BPF counter on {tracepoint}: {err}") from err
        except BackendError:
            self.close()
            raise

    def read(self) -> dict[int, int]:
        """Events so far, by field value (values >= slots are not counted)."""
        out = {}
        key = ctypes.c_uint32()
        val = ctypes.c_uint64()
        for i in range(self._slots):
            key.value = i
            attr = ctypes.create_string_buffer(
                struct.pack(
                    "<IIQQ",
                    self._map_fd,
                    0,
                    ctypes.addressof(key),
                    ctypes.addressof(val),
                ),
                _ATTR_BYTES,
            )
            _bpf(_BPF_MAP_LOOKUP_ELEM, attr)
            out[i] = int(val.value)
        return out

    def close(self) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TracepointCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
