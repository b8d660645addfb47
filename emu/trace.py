"""Recorded page-access traces: the ``.npz`` format, the LLC filter, replay.

A trace is the LLC-miss stream of a real program (recorded with valgrind's lackey,
see :mod:`emu.cmd_trace` and docs/traces.md), with pages numbered in first-touch
order. :class:`TraceWorkload` replays it in recorded order as an emulator workload.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from emu.workloads import Workload

__all__ = [
    "FORMAT",
    "VERSION",
    "LackeyParser",
    "LlcFilter",
    "PageNumbering",
    "Trace",
    "TraceWorkload",
    "load_trace",
]

FORMAT = "hypertier-trace"
VERSION = 1
PAGE_SHIFT = 12
LINE_SHIFT = 6

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# ------------------------------------------------------------------ format
@dataclass(frozen=True)
class Trace:
    """One recorded trace (the arrays of the ``.npz`` plus its metadata).

    ``pages[i]`` is the virtual page number (address >> 12) of page index i;
    indices are in first-touch order. ``accesses`` holds one page index per LLC
    miss in program order; ``writes`` (optional) marks misses caused by a store;
    ``phases`` (optional) the access indices where phases 1, 2, ... begin.
    """

    pages: U64
    accesses: npt.NDArray[np.unsignedinteger]
    writes: BoolArray | None = None
    phases: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.accesses)
        if n == 0 or len(self.pages) == 0:
            raise ValueError("trace has no accesses")
        if int(self.accesses.max()) >= len(self.pages):
            raise ValueError("trace access refers to a page index out of range")
        if self.writes is not None and len(self.writes) != n:
            raise ValueError("trace writes and accesses differ in length")
        ph = self.phases
        if len(ph) and (ph[0] <= 0 or ph[-1] >= n or np.any(np.diff(ph) <= 0)):
            raise ValueError("trace phases must be increasing indices in (0, n)")

    @property
    def npages(self) -> int:
        return len(self.pages)

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(start, end) access index of each phase."""
        bounds = [0, *self.phases.tolist(), len(self.accesses)]
        return list(itertools.pairwise(bounds))

    def save(self, path: Path) -> None:
        """Write the compressed ``.npz`` (docs/traces.md)."""
        n = self.npages
        dtype = np.uint16 if n <= 1 << 16 else np.uint32
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "pages": self.pages.astype(np.uint64),
            "accesses": self.accesses.astype(dtype),
            "phases": self.phases.astype(np.int64),
            "meta": np.array(
                json.dumps({"format": FORMAT, "version": VERSION, **self.meta})
            ),
        }
        if self.writes is not None:
            arrays["writes"] = np.packbits(self.writes)
        with path.open("wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)


def load_trace(path: Path | str) -> Trace:
    """Read a trace ``.npz``. Raises ValueError if it is not one."""
    with np.load(Path(path), allow_pickle=False) as z:
        try:
            meta = json.loads(str(z["meta"]))
            pages = z["pages"].astype(np.uint64)
            accesses = z["accesses"]
            phases = z["phases"].astype(np.int64)
            writes = (
                np.unpackbits(z["writes"], count=len(accesses)).astype(bool)
                if "writes" in z.files
                else None
            )
        except KeyError as err:
            raise ValueError(f"{path}: not a {FORMAT} file ({err})") from err
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
    return Trace(pages, accesses, writes, phases, meta)


@lru_cache(maxsize=8)
def _cached(path: str) -> Trace:
    return load_trace(path)


# ------------------------------------------------------------------ replay
class TraceWorkload(Workload):
    """Replays a trace in recorded order, from the start, wrapping at its end.

    ``phase`` is the index of the trace's current phase segment; a wrap starts
    segment 0 again (the program runs once more over memory it already has).
    ``rates()`` are the current segment's access shares. The process should be
    spawned without prefault so pages are allocated at first touch, in order.
    """

    prefault = False

    def __init__(self, trace: Trace, name: str = "trace", mlp: float = 2.0) -> None:
        self.trace = trace
        self.name = name
        self.mlp = mlp
        self.npages = trace.npages
        self.phase = 0
        self.streams = []
        self.stream_share = 0.0
        self._acc = trace.accesses.astype(np.int32)  # generate returns views
        self._writes = trace.writes
        w = trace.writes
        self.write_fraction = float(w.mean()) if w is not None else 0.0
        self._bounds = np.array([s for s, _ in trace.segments], np.int64)
        self._pos = 0
        self._last_writes: BoolArray | None = None
        self._seg_counts: dict[int, npt.NDArray[np.float64]] = {}
        self.weights = self.rates()

    @classmethod
    def from_file(cls, path: Path | str, mlp: float = 2.0) -> TraceWorkload:
        """The trace at ``path`` (loaded once per process and shared)."""
        p = Path(path)
        return cls(_cached(str(p.resolve())), name=f"trace:{p}", mlp=mlp)

    def _segment_at(self, pos: int) -> int:
        return int(np.searchsorted(self._bounds, pos, side="right")) - 1

    def generate(self, n: int) -> npt.NDArray[np.int32]:
        """The next ``n`` page indices in recorded order (wrapping at the end)."""
        total = len(self._acc)
        s = self._pos
        wr: BoolArray | None
        if s + n <= total:
            out = self._acc[s : s + n]
            wr = None if self._writes is None else self._writes[s : s + n]
        else:
            idx = (s + np.arange(n, dtype=np.int64)) % total
            out = self._acc[idx]
            wr = None if self._writes is None else self._writes[idx]
        self._last_writes = wr
        self._pos = (self._pos + n) % total
        self.phase = self._segment_at(self._pos)
        return out

    def last_writes(self) -> BoolArray | None:
        """Store flags of the accesses the last ``generate`` returned."""
        return self._last_writes

    def segment_counts(self, seg: int) -> npt.NDArray[np.float64]:
        """Accesses per page in phase segment ``seg`` of one pass of the trace."""
        if seg not in self._seg_counts:
            s, e = self.trace.segments[seg]
            self._seg_counts[seg] = np.bincount(
                self._acc[s:e], minlength=self.npages
            ).astype(np.float64)
        return self._seg_counts[seg]

    def rates(self) -> npt.NDArray[np.float64]:
        c = self.segment_counts(self.phase)
        out: npt.NDArray[np.float64] = c / max(1.0, float(c.sum()))
        return out

    def expected_counts(self, n: int) -> npt.NDArray[np.float64]:
        """Accesses per page over the next ``n`` accesses of the replay."""
        total = len(self._acc)
        full, rest = divmod(n, total)
        out = np.zeros(self.npages)
        if full:
            out += full * np.bincount(self._acc, minlength=self.npages)
        s = self._pos
        e = s + rest
        out += np.bincount(self._acc[s : min(e, total)], minlength=self.npages)
        if e > total:
            out += np.bincount(self._acc[: e - total], minlength=self.npages)
        return out

    def phase_change(self) -> None:
        """Phases of a trace are recorded; a forced change skips to the next one."""
        if len(self._bounds) > 1:
            nxt = (self.phase + 1) % len(self._bounds)
            self._pos = int(self._bounds[nxt])
            self.phase = nxt


# ------------------------------------------------------------- LLC filter
class LlcFilter:
    """A set-associative LRU cache of line numbers, fed in chunks.

    ``access(lines)`` returns a miss mask in input order and keeps the cache
    state for the next chunk. Vectorised over sets: accesses are grouped by set,
    repeats of a set's most recent line (always hits) dropped, and the remaining
    k-th access of every set is simulated at once, round by round.
    """

    def __init__(self, size_bytes: int, ways: int = 16, line_bytes: int = 64) -> None:
        if ways < 1 or line_bytes < 1 or size_bytes < ways * line_bytes:
            raise ValueError(
                f"cache of {size_bytes} bytes cannot hold {ways} ways of "
                f"{line_bytes}-byte lines"
            )
        self.ways = ways
        self.line_bytes = line_bytes
        self.nsets = size_bytes // (ways * line_bytes)
        self.size_bytes = self.nsets * ways * line_bytes
        self._tags = np.full((self.nsets, ways), -1, np.int64)
        self._stamp = np.full((self.nsets, ways), -1, np.int64)
        self._mru = np.full(self.nsets, -1, np.int64)
        self._clock = 0

    def access(self, lines: npt.NDArray[np.integer]) -> BoolArray:
        """Feed ``lines`` (line numbers, address // line_bytes) in order."""
        lines = np.asarray(lines, np.int64)
        n = len(lines)
        miss = np.zeros(n, bool)
        if n == 0:
            return miss
        sets = lines % self.nsets
        order = np.argsort(sets, kind="stable")
        ss, ll = sets[order], lines[order]
        first = np.ones(n, bool)
        first[1:] = ss[1:] != ss[:-1]
        prev = np.empty(n, np.int64)
        prev[1:] = ll[:-1]
        prev[first] = self._mru[ss[first]]
        keep = ll != prev  # a repeat of the set's MRU line hits and changes nothing
        ks, kl, kidx = ss[keep], ll[keep], order[keep]
        last = np.ones(n, bool)
        last[:-1] = ss[1:] != ss[:-1]
        self._mru[ss[last]] = ll[last]
        m = len(ks)
        if m == 0:
            return miss
        newset = np.ones(m, bool)
        newset[1:] = ks[1:] != ks[:-1]
        start = np.maximum.accumulate(np.where(newset, np.arange(m), 0))
        rank = np.arange(m) - start
        by_round = np.argsort(rank, kind="stable")
        counts = np.bincount(rank)
        pos = 0
        tags, stamp = self._tags, self._stamp
        for r, c in enumerate(counts.tolist()):
            sel = by_round[pos : pos + c]
            pos += c
            s, t = ks[sel], kl[sel]
            row = tags[s]
            match = row == t[:, None]
            hit = match.any(axis=1)
            way = np.where(hit, match.argmax(axis=1), stamp[s].argmin(axis=1))
            tags[s, way] = t
            stamp[s, way] = self._clock + r
            miss[kidx[sel[~hit]]] = True
        self._clock += len(counts)
        return miss


# ------------------------------------------------------- page numbering
class PageNumbering:
    """Numbers virtual pages 0, 1, 2, ... in first-touch order, chunk by chunk."""

    def __init__(self) -> None:
        self._known = np.empty(0, np.uint64)  # sorted page numbers
        self._ids = np.empty(0, np.int64)  # their indices
        self.pages: list[U64] = []  # new pages per chunk, in first-touch order

    @property
    def count(self) -> int:
        return len(self._known)

    def number(self, pages: U64) -> I64:
        """Index of each page in ``pages`` (new pages get the next indices)."""
        uniq, first = np.unique(pages, return_index=True)
        pos = np.searchsorted(self._known, uniq)
        found = pos < len(self._known)
        found[found] = self._known[pos[found]] == uniq[found]
        new, new_first = uniq[~found], first[~found]
        if len(new):
            new = new[np.argsort(new_first, kind="stable")]
            ids = np.arange(self.count, self.count + len(new), dtype=np.int64)
            self.pages.append(new)
            known = np.concatenate([self._known, new])
            allids = np.concatenate([self._ids, ids])
            o = np.argsort(known, kind="stable")
            self._known, self._ids = known[o], allids[o]
        out: I64 = self._ids[np.searchsorted(self._known, pages)]
        return out

    def all_pages(self) -> U64:
        return np.concatenate(self.pages) if self.pages else np.empty(0, np.uint64)


# ------------------------------------------------------------ lackey log
_HEX = np.zeros(256, np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
    _HEX[bytes([_c]).upper()[0]] = _i
_SHIFTS = (4 * np.arange(15, -1, -1)).astype(np.uint64)
_SP, _NL, _COMMA = ord(" "), ord("\n"), ord(",")
_L, _S, _M = ord("L"), ord("S"), ord("M")
# syscalls whose buffer argument the kernel writes: name -> (fd arg, buf arg)
KERNEL_WRITE_SYSCALLS = ("read", "pread64", "recvfrom")
_CALL = re.compile(
    r"SYSCALL\[(\d+),(\d+)\]\((\d+)\) sys_(\w+) \( *(\d+), *(0x[0-9a-fA-F]+)"
)
_DONE = re.compile(r"--> (?:\[[\w-]+\] )?Success\((0x[0-9a-fA-F]+)\)")
_OPEN = re.compile(
    r"SYSCALL\[\d+,\d+\]\(\d+\) sys_open(?:at)? "
    r"\((?: *\d+,)? *0x[0-9a-fA-F]+\(([^)]*)\)"
)
_ASYNC_DONE = re.compile(
    r"SYSCALL\[(\d+),(\d+)\]\((\d+)\) \.\.\. \[async\] --> Success\((0x[0-9a-fA-F]+)\)"
)


@dataclass
class ParsedBlock:
    """Accesses of one block of lackey output: byte addresses and store flags."""

    addrs: U64
    stores: BoolArray
    kernel_bytes: int = 0
    marks: list[int] = field(default_factory=list)  # access offsets of phase marks


class LackeyParser:
    """Streams ``valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes`` output.

    Data lines (`` L``/`` S``/`` M`` addr,size) become accesses (``M`` is a store;
    instruction fetches are left out). The buffer of every successful read(2),
    pread64(2) and recvfrom(2) becomes stores of its cache lines at the point the
    syscall returned, since lackey does not see the kernel's writes. An open(2)
    or openat(2) of ``marker_path`` (successful or not) marks a phase boundary.
    """

    def __init__(self, marker_path: str | None = None) -> None:
        self.marker_path = marker_path
        self._tail = b""
        self._pending: dict[tuple[str, str, str], int] = {}
        self.accesses = 0
        self.kernel_bytes = 0

    def feed(self, data: bytes) -> ParsedBlock:
        """Parse ``data`` (any split of the stream); a partial last line waits."""
        buf = self._tail + data
        cut = buf.rfind(b"\n") + 1
        self._tail = buf[cut:]
        return self._parse(buf[:cut])

    def finish(self) -> ParsedBlock:
        """Parse what is left (a last line without newline)."""
        tail, self._tail = self._tail, b""
        return self._parse(tail + b"\n" if tail else b"")

    def _parse(self, buf: bytes) -> ParsedBlock:
        a = np.frombuffer(buf, np.uint8)
        if len(a) == 0:
            return ParsedBlock(np.empty(0, np.uint64), np.empty(0, bool))
        ends = np.flatnonzero(a == _NL)
        starts = np.empty(len(ends), np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        length = ends - starts
        c0 = a[np.minimum(starts, len(a) - 1)]
        c1 = a[np.minimum(starts + 1, len(a) - 1)]
        data = (length >= 5) & (c0 == _SP) & ((c1 == _L) | (c1 == _S) | (c1 == _M))
        ds = starts[data]
        commas = np.flatnonzero(a == _COMMA)
        cpos = commas[np.minimum(np.searchsorted(commas, ds), len(commas) - 1)]
        ok = (cpos > ds + 3) & (cpos - (ds + 3) <= 16) & (cpos < ends[data])
        ds, cpos = ds[ok], cpos[ok]
        line_no = np.flatnonzero(data)[ok]
        idx = cpos[:, None] - 16 + np.arange(16)[None, :]
        valid = idx >= (ds + 3)[:, None]
        digits = _HEX[a[np.where(valid, idx, 0)]]
        digits[~valid] = 0
        addrs = (digits << _SHIFTS).sum(axis=1, dtype=np.uint64)
        stores = a[ds + 1] != _L
        kernel, mark_lines = self._syscalls(buf, starts, ends, c0)
        keys_sorted = line_no
        if kernel:
            k_lines = np.concatenate([np.full(len(x), i) for i, x in kernel])
            k_addrs = np.concatenate([x for _, x in kernel])
            keys = np.concatenate([line_no, k_lines])
            o = np.argsort(keys, kind="stable")
            addrs = np.concatenate([addrs, k_addrs])[o]
            stores = np.concatenate([stores, np.ones(len(k_addrs), bool)])[o]
            kbytes = len(k_addrs) << LINE_SHIFT
            keys_sorted = keys[o]
        else:
            kbytes = 0
        self.accesses += len(addrs)
        self.kernel_bytes += kbytes
        marks = np.searchsorted(keys_sorted, np.array(mark_lines, np.int64)).tolist()
        return ParsedBlock(addrs.astype(np.uint64), stores, kbytes, marks)

    def _syscalls(
        self,
        buf: bytes,
        starts: I64,
        ends: npt.NDArray[np.intp],
        c0: npt.NDArray[np.uint8],
    ) -> tuple[list[tuple[int, U64]], list[int]]:
        out: list[tuple[int, U64]] = []
        marks: list[int] = []
        for i in np.flatnonzero(c0 == ord("S")).tolist():
            text = buf[int(starts[i]) : int(ends[i])].decode("latin-1")
            if not text.startswith("SYSCALL["):
                continue
            if self.marker_path is not None and self._opens_marker(text):
                marks.append(i)
                continue
            buf_addr, nbytes = self._kernel_write(text)
            if nbytes > 0:
                first = buf_addr >> LINE_SHIFT
                last = (buf_addr + nbytes - 1) >> LINE_SHIFT
                lines = np.arange(first, last + 1, dtype=np.uint64)
                out.append((i, lines << np.uint64(LINE_SHIFT)))
        return out, marks

    def _opens_marker(self, text: str) -> bool:
        m = _OPEN.match(text)
        return m is not None and m.group(1) == self.marker_path

    def _kernel_write(self, text: str) -> tuple[int, int]:
        """(buffer, bytes) the kernel wrote for this syscall line, or (0, 0)."""
        m = _CALL.match(text)
        if m is not None:
            pid, tid, nr, name, _fd, addr = m.groups()
            if name not in KERNEL_WRITE_SYSCALLS:
                return 0, 0
            done = _DONE.search(text)
            if done is not None:
                return int(addr, 16), int(done.group(1), 16)
            if "[async]" in text:
                self._pending[(pid, tid, nr)] = int(addr, 16)
            return 0, 0
        m2 = _ASYNC_DONE.match(text)
        if m2 is not None:
            pid, tid, nr, result = m2.groups()
            addr_ = self._pending.pop((pid, tid, nr), None)
            if addr_ is not None:
                return addr_, int(result, 16)
        return 0, 0


def miss_stream(
    blocks: Iterator[ParsedBlock], llc: LlcFilter, numbering: PageNumbering
) -> Iterator[tuple[I64, BoolArray, int]]:
    """(page indices, store flags, raw accesses) of the LLC misses of each block."""
    for blk in blocks:
        if len(blk.addrs) == 0:
            yield np.empty(0, np.int64), np.empty(0, bool), 0
            continue
        miss = llc.access(blk.addrs >> np.uint64(LINE_SHIFT))
        pages = blk.addrs[miss] >> np.uint64(PAGE_SHIFT)
        yield numbering.number(pages), blk.stores[miss], len(blk.addrs)


def build_trace(
    chunks: Sequence[tuple[I64, BoolArray]],
    numbering: PageNumbering,
    phases: Sequence[int],
    meta: dict[str, object],
) -> Trace:
    """A :class:`Trace` from the miss chunks of :func:`miss_stream`."""
    acc = np.concatenate([c[0] for c in chunks]) if chunks else np.empty(0, np.int64)
    wr = np.concatenate([c[1] for c in chunks]) if chunks else np.empty(0, bool)
    n = len(acc)
    ph = sorted({p for p in phases if 0 < p < n})
    return Trace(
        numbering.all_pages(), acc.astype(np.uint32), wr, np.array(ph, np.int64), meta
    )
