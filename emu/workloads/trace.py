"""Recorded page-access traces: the ``.npz`` format, the LLC filter, replay.

A trace is the LLC-miss stream of a real program (recorded with valgrind's lackey,
see :mod:`emu.evaluation.cmd_trace` and docs/traces.md), with pages numbered
in first-touch order. :class:`TraceWorkload` replays it in recorded order as an
emulator workload.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from emu.workloads.synthetic import Workload
from hypertier_common.arrays import F64, I32, I64, U64, BoolArray

__all__ = [
    "FORMAT",
    "LAYOUTS",
    "VERSION",
    "LlcFilter",
    "PageNumbering",
    "Trace",
    "TraceWorkload",
    "address_rank",
    "build_trace",
    "load_trace",
]

FORMAT = "hypertier-trace"
VERSION = 1
PAGE_SHIFT = 12
LINE_SHIFT = 6


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


# Traces recorded from real programs, shipped with the package (docs/traces.md):
# ``trace:NAME`` names one.
SHIPPED_DIR = Path(__file__).with_name("traces")


def shipped_traces() -> list[str]:
    """Names of the shipped traces (``trace:NAME`` workloads), sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.npz"))


@lru_cache(maxsize=8)
def _cached(path: str) -> Trace:
    return load_trace(path)


# ------------------------------------------------------------------ replay
# Where the replayed process's page i sits in its one emulated mapping:
# "touch", at i (pages in first-touch order); "address", at the rank of the
# page's recorded virtual address (the touched pages in address order, the
# holes between them left out), which is the layout an agent that classifies
# by address ranges sees in the real program.
LAYOUTS = ("touch", "address")


def address_rank(pages: U64) -> npt.NDArray[np.int32]:
    """For each page index, its rank among ``pages`` in address order."""
    rank = np.empty(len(pages), np.int32)
    rank[np.argsort(pages, kind="stable")] = np.arange(len(pages), dtype=np.int32)
    return rank


class TraceWorkload(Workload, name="trace", mlp=2.0, write_fraction=0.0):
    """Replays a trace in recorded order, from the start, wrapping at its end.

    ``phase`` is the index of the trace's current phase segment; a wrap starts
    segment 0 again (the program runs once more over memory it already has).
    ``rates()`` are the current segment's access shares. The process should be
    spawned without prefault so pages are allocated at first touch, in order.
    """

    prefault = False

    def __init__(
        self,
        trace: Trace,
        name: str = "trace",
        mlp: float = 2.0,
        layout: str = "touch",
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"trace layout {layout!r} not one of {LAYOUTS}")
        self.trace = trace
        self.name = name
        self.mlp = mlp
        self.layout = layout
        self.npages = trace.npages
        self.phase = 0
        self.streams = []
        self.stream_share = 0.0
        self._acc = trace.accesses.astype(np.int32)  # generate returns views
        if layout == "address":
            self._acc = address_rank(trace.pages)[self._acc]
        self._writes = trace.writes
        w = trace.writes
        self.write_fraction = float(w.mean()) if w is not None else 0.0
        self._bounds = np.array([s for s, _ in trace.segments], np.int64)
        self._pos = 0
        self._last_writes: BoolArray | None = None
        self._seg_counts: dict[int, F64] = {}
        self.weights = self.rates()

    @classmethod
    def from_file(cls, path: Path | str, mlp: float = 2.0) -> TraceWorkload:
        """The trace at ``path``, or the shipped trace of that name
        (:func:`shipped_traces`); loaded once per process and shared."""
        p = Path(path)
        shipped = SHIPPED_DIR / f"{path}.npz"
        if not p.exists() and shipped.is_file():
            trace, name = _cached(str(shipped)), f"trace:{path}"
        else:
            trace, name = _cached(str(p.resolve())), f"trace:{p}"
        return cls(trace, name=name, mlp=mlp)

    def laid_out(self, layout: str) -> TraceWorkload:
        """This trace's replay with its pages laid out as ``layout`` (a new
        replay from the start; itself if they already are)."""
        if layout == self.layout:
            return self
        return TraceWorkload(self.trace, self.name, self.mlp, layout)

    def _segment_at(self, pos: int) -> int:
        return int(np.searchsorted(self._bounds, pos, side="right")) - 1

    def generate(self, n: int) -> I32:
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

    def segment_counts(self, seg: int) -> F64:
        """Accesses per page in phase segment ``seg`` of one pass of the trace."""
        if seg not in self._seg_counts:
            s, e = self.trace.segments[seg]
            self._seg_counts[seg] = np.bincount(
                self._acc[s:e], minlength=self.npages
            ).astype(np.float64)
        return self._seg_counts[seg]

    def rates(self) -> F64:
        c = self.segment_counts(self.phase)
        out: F64 = c / max(1.0, float(c.sum()))
        return out

    def expected_counts(self, n: int) -> F64:
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
