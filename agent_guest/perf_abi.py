"""The perf_event_open(2) ABI as pure Python: perf_event_attr bytes, constants, and
bulk numpy decoding of the mmap'd ring buffer (PERF_RECORD_SAMPLE/LOST/THROTTLE).

See perf_event_open(2) and include/uapi/linux/perf_event.h. Nothing here makes a
syscall; ``linux_syscalls`` and ``linux_perf`` do, and ``bench/guest_bench.py``
decodes synthetic rings.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hypertier_common.arrays import I32, U8, U32, U64

__all__ = [
    "ATTR_SIZE",
    "Decoded",
    "decode",
    "encode_attr",
    "parse_event_spec",
    "ring_slice",
    "synthetic_ring",
]

# perf_type_id
TYPE_HARDWARE = 0
TYPE_SOFTWARE = 1
TYPE_TRACEPOINT = 2
TYPE_RAW = 4
# perf_sw_ids
SW_PAGE_FAULTS = 2
SW_PAGE_FAULTS_MIN = 5
SW_PAGE_FAULTS_MAJ = 6
SW_DUMMY = 9
# perf_event_sample_format
SAMPLE_IP = 1 << 0
SAMPLE_TID = 1 << 1
SAMPLE_TIME = 1 << 2
SAMPLE_ADDR = 1 << 3
SAMPLE_READ = 1 << 4
SAMPLE_CALLCHAIN = 1 << 5
SAMPLE_ID = 1 << 6
SAMPLE_CPU = 1 << 7
SAMPLE_PERIOD = 1 << 8
SAMPLE_STREAM_ID = 1 << 9
SAMPLE_RAW = 1 << 10
SAMPLE_WEIGHT = 1 << 14
SAMPLE_DATA_SRC = 1 << 15
SAMPLE_IDENTIFIER = 1 << 16
SAMPLE_PHYS_ADDR = 1 << 19
# perf_event_type
RECORD_LOST = 2
RECORD_THROTTLE = 5
RECORD_UNTHROTTLE = 6
RECORD_SAMPLE = 9
RECORD_LOST_SAMPLES = 13
# perf_event_attr flag bits
FLAG_DISABLED = 1 << 0
FLAG_EXCLUDE_KERNEL = 1 << 5
FLAG_EXCLUDE_HV = 1 << 6
FLAG_WATERMARK = 1 << 14
PRECISE_IP_SHIFT = 15
# ioctls (_IO('$', n))
IOC_ENABLE = 0x2400
IOC_DISABLE = 0x2401
# struct perf_event_mmap_page: data_head/data_tail/data_offset/data_size offsets
MMAP_DATA_HEAD = 1024
MMAP_DATA_TAIL = 1032

# PERF_ATTR_SIZE_VER5 (Linux 4.1): every field this agent sets fits in it, and
# older kernels reject a larger attr only if the extra bytes are non-zero.
ATTR_SIZE = 112

# Fields of a sample record in ABI order, with their size in bytes (fixed ones only).
_FIXED_FIELDS: tuple[tuple[int, str, int], ...] = (
    (SAMPLE_IDENTIFIER, "identifier", 8),
    (SAMPLE_IP, "ip", 8),
    (SAMPLE_TID, "tid", 8),
    (SAMPLE_TIME, "time", 8),
    (SAMPLE_ADDR, "addr", 8),
    (SAMPLE_ID, "id", 8),
    (SAMPLE_STREAM_ID, "stream_id", 8),
    (SAMPLE_CPU, "cpu", 8),
    (SAMPLE_PERIOD, "period", 8),
)
_AFTER_RAW: tuple[tuple[int, str, int], ...] = (
    (SAMPLE_WEIGHT, "weight", 8),
    (SAMPLE_DATA_SRC, "data_src", 8),
    (SAMPLE_PHYS_ADDR, "phys_addr", 8),
)
_SUPPORTED = sum(bit for bit, _, _ in _FIXED_FIELDS + _AFTER_RAW) | SAMPLE_RAW


def encode_attr(
    *,
    type_: int,
    config: int,
    sample_period: int,
    sample_type: int,
    precise_ip: int = 0,
    config1: int = 0,
    config2: int = 0,
    exclude_kernel: bool = True,
    wakeup_watermark: int = 0,
) -> bytes:
    """A struct perf_event_attr (ATTR_SIZE bytes), created disabled."""
    if sample_type & ~_SUPPORTED:
        raise ValueError(f"sample_type {sample_type:#x} has fields decode() lacks")
    flags = FLAG_DISABLED | FLAG_EXCLUDE_HV | (precise_ip & 3) << PRECISE_IP_SHIFT
    if exclude_kernel:
        flags |= FLAG_EXCLUDE_KERNEL
    if wakeup_watermark:
        flags |= FLAG_WATERMARK
    head = struct.pack(
        "<IIQQQQQIIQQ",
        type_,
        ATTR_SIZE,
        config,
        sample_period,
        sample_type,
        0,  # read_format
        flags,
        wakeup_watermark,
        0,  # bp_type
        config1,
        config2,
    )
    return head + bytes(ATTR_SIZE - len(head))


def parse_event_spec(spec: str, formats: Mapping[str, str]) -> tuple[int, int, int]:
    """(config, config1, config2) of a sysfs event spec such as
    ``event=0xcd,umask=0x1,ldlat=3`` given the PMU's ``format/`` files
    (``{"event": "config:0-7", "ldlat": "config1:0-15", ...}``).
    """
    regs = {"config": 0, "config1": 0, "config2": 0}
    for term in filter(None, (t.strip() for t in spec.split(","))):
        name, _, raw = term.partition("=")
        value = int(raw, 0) if raw else 1
        if name not in formats:
            raise ValueError(f"event term {name!r} has no format entry")
        reg, _, bits = formats[name].strip().partition(":")
        shift = 0
        for part in bits.split(","):
            lo_s, _, hi_s = part.partition("-")
            lo, hi = int(lo_s), int(hi_s or lo_s)
            width = hi - lo + 1
            regs[reg] |= ((value >> shift) & ((1 << width) - 1)) << lo
            shift += width
    return regs["config"], regs["config1"], regs["config2"]


@dataclass(frozen=True, eq=False)
class Decoded:
    """Samples decoded from ring bytes, as parallel arrays, plus record counters.

    The arrays may be strided views into the decoded bytes (zero copy)."""

    pid: I32
    tid: I32
    time_ns: U64
    addr: U64
    weight: U32
    phys_addr: U64
    lost: int
    throttled: int
    unthrottled: int
    bad_bytes: int


def _field_offsets(sample_type: int) -> tuple[dict[str, int], dict[str, int]]:
    """Byte offsets from the record start of fields before RAW, and from the record
    end (negative) of fields after it."""
    front: dict[str, int] = {}
    off = 8  # perf_event_header
    for bit, name, size in _FIXED_FIELDS:
        if sample_type & bit:
            front[name] = off
            off += size
    back: dict[str, int] = {}
    after = [(name, size) for bit, name, size in _AFTER_RAW if sample_type & bit]
    end = -sum(size for _, size in after)
    for name, size in after:
        back[name] = end
        end += size
    if sample_type & SAMPLE_RAW:
        front["raw"] = off
    return front, back


def decode(buf: U8, sample_type: int, raw_addr_offset: int = -1) -> Decoded:
    """Decode linear ring bytes (whole records, 8-byte aligned) in bulk.

    Runs of PERF_RECORD_SAMPLE of one size are decoded as strided numpy columns;
    only the rare other records (LOST, THROTTLE, ...) are visited one by one, so
    the work is vectorised over samples. With SAMPLE_RAW (tracepoints) and no
    SAMPLE_ADDR, ``addr`` is the u64 at ``raw_addr_offset`` within the raw data.
    """
    front, back = _field_offsets(sample_type)
    n = int(buf.shape[0]) - int(buf.shape[0]) % 8
    mem = buf.data
    pos = 0
    cols: dict[str, list[U64]] = {}
    pids: list[I32] = []
    tids: list[I32] = []
    lost = throttled = unthrottled = bad = 0
    while pos + 8 <= n:
        rtype, _misc, size = struct.unpack_from("<IHH", mem, pos)
        if size < 8 or size % 8 or pos + size > n:
            bad += n - pos
            break
        if rtype != RECORD_SAMPLE:
            if rtype == RECORD_LOST:
                lost += struct.unpack_from("<Q", mem, pos + 16)[0]
            elif rtype == RECORD_LOST_SAMPLES:
                lost += struct.unpack_from("<Q", mem, pos + 8)[0]
            elif rtype == RECORD_THROTTLE:
                throttled += 1
            elif rtype == RECORD_UNTHROTTLE:
                unthrottled += 1
            pos += size
            continue
        k = (n - pos) // size
        rows = buf[pos : pos + k * size].view("<u8").reshape(k, size // 8)
        ok = (rows[:, 0] & 0xFFFF0000FFFFFFFF) == ((size << 48) | RECORD_SAMPLE)
        if not ok.all():
            k = int(np.argmin(ok))
            rows = rows[:k]
        block = buf[pos : pos + k * size]
        _take(block, k, size, front, back, raw_addr_offset, cols, pids, tids)
        pos += k * size
    n_samples = sum(int(p.shape[0]) for p in cols.get("addr", []))
    return Decoded(
        pid=_cat32(pids),
        tid=_cat32(tids),
        time_ns=_cat64(cols.get("time", [])),
        addr=_cat64(cols.get("addr", [])),
        weight=_cat_u32(cols.get("weight32", []), n_samples),
        phys_addr=_cat64(cols.get("phys_addr", [])),
        lost=lost,
        throttled=throttled,
        unthrottled=unthrottled,
        bad_bytes=bad,
    )


def _take(
    block: U8,
    k: int,
    size: int,
    front: dict[str, int],
    back: dict[str, int],
    raw_addr_offset: int,
    cols: dict[str, list[U64]],
    pids: list[I32],
    tids: list[I32],
) -> None:
    """Append strided column views of ``k`` records (no copy: they alias
    ``block``, which the caller owns; ring bytes are copied out before decode)."""
    if k == 0:
        return
    words32 = block.view("<i4").reshape(k, size // 4)
    if "tid" in front:
        pids.append(words32[:, front["tid"] // 4])
        tids.append(words32[:, front["tid"] // 4 + 1])
    words = block.view("<u8").reshape(k, size // 8)
    for name in ("time", "addr"):
        if name in front:
            cols.setdefault(name, []).append(words[:, front[name] // 8])
    if "phys_addr" in back:
        cols.setdefault("phys_addr", []).append(
            words[:, (size + back["phys_addr"]) // 8]
        )
    if "weight" in back:
        # the low 32 bits (little endian) of the u64 weight: the latency in cycles
        w = words32[:, (size + back["weight"]) // 4].view(np.uint32)
        cols.setdefault("weight32", []).append(w)  # type: ignore[arg-type]
    if "addr" not in front and "raw" in front and raw_addr_offset >= 0:
        # raw = u32 size, then the tracepoint entry; unaligned, so gather bytes.
        start = front["raw"] + 4 + raw_addr_offset
        raw = block.reshape(k, size)[:, start : start + 8]
        cols.setdefault("addr", []).append(
            np.ascontiguousarray(raw).view("<u8").reshape(k)
        )


def _cat64(parts: list[U64]) -> U64:
    if not parts:
        return np.empty(0, np.uint64)
    if len(parts) == 1:  # the common case: one run of samples, a zero-copy view
        return parts[0]
    return np.concatenate(parts).astype(np.uint64, copy=False)


def _cat32(parts: list[I32]) -> I32:
    if not parts:
        return np.empty(0, np.int32)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts).astype(np.int32, copy=False)


def _cat_u32(parts: list[U64], n: int) -> U32:
    if not parts:
        return np.zeros(n, np.uint32)
    if len(parts) == 1:
        return parts[0].view(np.uint32)
    return np.concatenate(parts).view(np.uint32)


def ring_slice(data: U8, tail: int, head: int) -> U8:
    """Copy the bytes [tail, head) out of a power-of-two ring ``data`` (unwrapped).

    The caller reads data_head (then, on weakly ordered CPUs, a read barrier; x86 is
    TSO), calls this, and only then writes data_tail, so the kernel never
    overwrites bytes still being copied.
    """
    size = int(data.shape[0])
    avail = head - tail
    if avail <= 0:
        return np.empty(0, np.uint8)
    if avail > size:
        raise ValueError(f"ring overrun: {avail} bytes pending in a {size}-byte ring")
    start = tail % size
    end = start + avail
    if end <= size:
        return data[start:end].copy()
    return np.concatenate((data[start:], data[: end - size]))


def synthetic_ring(
    n_samples: int,
    sample_type: int,
    *,
    pid: int = 1234,
    addr_base: int = 0x7F0000000000,
    span_bytes: int = 1 << 30,
    seed: int = 0,
) -> U8:
    """Ring bytes holding ``n_samples`` PERF_RECORD_SAMPLE records (tests, bench)."""
    front, back = _field_offsets(sample_type)
    if "raw" in front:
        raise ValueError("synthetic_ring does not build RAW records")
    size = 8 + 8 * (len(front) + len(back))
    rng = np.random.default_rng(seed)
    words = np.zeros((n_samples, size // 8), np.uint64)
    words[:, 0] = np.uint64((size << 48) | RECORD_SAMPLE)
    if "tid" in front:
        words[:, front["tid"] // 8] = np.uint64(pid | (pid << 32))
    if "time" in front:
        words[:, front["time"] // 8] = np.arange(n_samples, dtype=np.uint64) * 1000
    if "addr" in front:
        offs = rng.integers(0, span_bytes, n_samples, dtype=np.uint64)
        words[:, front["addr"] // 8] = np.uint64(addr_base) + offs
    if "weight" in back:
        words[:, (size + back["weight"]) // 8] = rng.integers(
            0, 500, n_samples, dtype=np.uint64
        )
    return words.reshape(-1).view(np.uint8)
