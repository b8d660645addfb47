"""Synthetic workloads with known hot sets, generated vectorised.

A workload is a distribution over the pages of one anonymous mapping: a random
part (drawn from a stratified inverse-CDF table, so one access costs a table
gather) and a streaming part (sequential scans, 64 cache-line misses per page).
Each emits LLC-miss streams of page indices (vpn, 0-based in its mapping).
``hot_set(n)`` names the n pages with the highest expected access rate, which is
what scenario tests assert placement against. ``phase_change()`` moves the hot
set, keeping the footprint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hypertier_common.arrays import F64, I32, I64, BoolArray

__all__ = ["TRACE_PREFIX", "WORKLOADS", "Workload", "make_workload", "workload_pages"]

_TABLE_BITS = 20
TRACE_PREFIX = "trace:"
_LINES_PER_PAGE = 64


def _zipf_weights(n: int, s: float) -> F64:
    w: F64 = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    w /= w.sum()
    return w


def _clustered_placement(
    rng: np.random.Generator, n: int, block: int = 512, jitter: float = 0.2
) -> I64:
    """Map page-rank -> page: ranks fill random 2 MiB blocks, some pages swapped.

    Models allocators that place objects of similar age (and popularity) together
    without making the hot set one contiguous range.
    """
    nblocks = -(-n // block)
    order = rng.permutation(nblocks)
    pages = (order[:, None] * block + np.arange(block)[None, :]).ravel()
    pages = pages[pages < n]
    k = int(len(pages) * jitter)
    if k > 1:
        idx = rng.choice(len(pages), size=k, replace=False)
        pages[idx] = pages[rng.permutation(idx)]
    return pages.astype(np.int64)


@dataclass
class _Stream:
    start: int
    length: int
    cursor: int = 0


class Workload:
    """A page-access generator. Subclasses build ``weights`` in ``_build``."""

    name = "workload"
    mlp = 4.0  # memory-level parallelism: independent misses in flight
    write_fraction = 0.1
    prefault = True  # pages touched in address order at spawn (a load phase)
    stream_share = 0.0  # share of accesses that scan ``streams`` (if any)

    def __init_subclass__(
        cls,
        *,
        name: str,
        mlp: float,
        write_fraction: float,
        stream_share: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """Each workload states its profile (the attributes above) in its class
        line: ``class Bfs(Workload, name="bfs", mlp=3.0, ...)``."""
        super().__init_subclass__(**kwargs)
        cls.name, cls.mlp = name, mlp
        cls.write_fraction, cls.stream_share = write_fraction, stream_share

    def __init__(self, npages: int, seed: int = 0) -> None:
        if npages < 1024:
            raise ValueError(f"{self.name}: footprint of {npages} pages is too small")
        self.npages = npages
        self.rng = np.random.default_rng(seed)
        self.streams: list[_Stream] = []
        self.phase = 0
        self.weights: F64 = np.zeros(npages)
        self._build()
        self._make_table()

    def _build(self) -> None:
        raise NotImplementedError

    def _region_start(self, size: int) -> int:
        """Where a region of ``size`` pages starts: page 0 in the first phase, a
        random page after each phase change (so the hot set moves)."""
        return int(self.rng.integers(0, self.npages - size)) if self.phase else 0

    def _hot_region(self, divisor: int) -> tuple[int, int]:
        """``(start, size)`` of a hot region of ``1 / divisor`` of the footprint,
        at least 64 pages, placed by ``_region_start``."""
        size = max(64, self.npages // divisor)
        return self._region_start(size), size

    def _power_law_then_streamed(self, placement: I64, s: float) -> None:
        """The first ``len(placement)`` pages read with zipf(``s``) popularity,
        rank ``i`` at page ``placement[i]``; the rest of the footprint scanned
        as one stream (a graph's vertex data, then its edge list)."""
        n = len(placement)
        w = np.zeros(self.npages)
        w[placement] = _zipf_weights(n, s)
        self.weights = w
        self.streams = [_Stream(n, self.npages - n)]

    def _make_table(self) -> None:
        cdf = np.cumsum(self.weights)
        cdf /= cdf[-1]
        grid = (np.arange(1 << _TABLE_BITS, dtype=np.float64) + 0.5) / (
            1 << _TABLE_BITS
        )
        self._table = np.minimum(np.searchsorted(cdf, grid), self.npages - 1).astype(
            np.int32
        )

    def generate(self, n: int) -> I32:
        """``n`` page indices in access order."""
        m = int(n * self.stream_share) if self.streams else 0
        idx = self.rng.integers(0, 1 << _TABLE_BITS, n - m, dtype=np.uint32)
        rand: I32 = self._table[idx]
        if m == 0:
            return rand
        parts = [rand]
        per = -(-m // len(self.streams))
        for st in self.streams:
            seq = (st.cursor + np.arange(per, dtype=np.int64)) // _LINES_PER_PAGE
            parts.append((st.start + seq % st.length).astype(np.int32))
            st.cursor = (st.cursor + per) % (st.length * _LINES_PER_PAGE)
        return np.concatenate(parts)[:n]

    def rates(self) -> F64:
        """Expected share of accesses per page (random and streaming parts)."""
        r = self.weights * (1.0 - self.stream_share if self.streams else 1.0)
        for st in self.streams:
            r[st.start : st.start + st.length] += (
                self.stream_share / len(self.streams) / st.length
            )
        return r

    def last_writes(self) -> BoolArray | None:
        """Store flags of the last ``generate``'s accesses; None: use
        ``write_fraction``."""
        return None

    def expected_counts(self, n: int) -> F64:
        """Expected accesses per page over the next ``n`` (the current phase)."""
        return self.rates() * n

    def hot_set(self, n: int) -> I64:
        """The ``n`` pages with the highest expected access rate."""
        n = min(n, self.npages)
        return np.argsort(-self.rates(), kind="stable")[:n].astype(np.int64)

    def phase_change(self) -> None:
        """Move the hot set elsewhere in the footprint."""
        self.phase += 1
        self._build()
        self._make_table()


class Gups(Workload, name="gups", mlp=8.0, write_fraction=0.5):
    """GUPS with a hot set: a contiguous hot region taking ``hot_prob`` of updates."""

    def __init__(
        self,
        npages: int,
        seed: int = 0,
        hot_fraction: float = 0.1,
        hot_prob: float = 0.9,
    ) -> None:
        self.hot_fraction = hot_fraction
        self.hot_prob = hot_prob
        super().__init__(npages, seed)

    def _build(self) -> None:
        h = max(1, int(self.npages * self.hot_fraction))
        start = int(self.rng.integers(0, self.npages - h))
        w = np.full(self.npages, (1 - self.hot_prob) / self.npages)
        w[start : start + h] += self.hot_prob / h
        self.weights = w / w.sum()
        self.hot_start = start


class KvZipf(Workload, name="kv-zipf", mlp=2.0, write_fraction=0.1):
    """Key-value store (silo/memcached-like): zipf(0.99) keys, items clustered."""

    def _build(self) -> None:
        ranked = _zipf_weights(self.npages, 0.99)
        w = np.empty(self.npages)
        w[_clustered_placement(self.rng, self.npages)] = ranked
        self.weights = w


class Btree(Workload, name="btree", mlp=1.5, write_fraction=0.05):
    """B-tree lookups: inner levels hot, leaves zipf(0.6) over clustered keys."""

    def _build(self) -> None:
        fanout, n = 64, self.npages
        inner = max(1, n // fanout)
        w = np.zeros(n)
        # one root-to-leaf path per lookup: each inner level shares one access
        levels, size = [], inner
        while size > 1:
            levels.append(size)
            size = max(1, size // fanout)
        levels.append(1)
        base = self._region_start(inner)
        off = base
        for size in levels[::-1]:
            w[off : off + size] += 1.0 / size
            off += size
        leaves = np.setdiff1d(np.arange(n), np.arange(base, off))
        leaf_w = _zipf_weights(len(leaves), 0.6)
        w[leaves[_clustered_placement(self.rng, len(leaves))]] += leaf_w
        self.weights = w / w.sum()


class Bfs(Workload, name="bfs", mlp=3.0, write_fraction=0.1, stream_share=0.4):
    """Graph500-style BFS: power-law vertex reads (scattered), edge list scans."""

    def _build(self) -> None:
        self._power_law_then_streamed(self.rng.permutation(self.npages // 4), 0.8)


class Pagerank(
    Workload, name="pagerank", mlp=4.0, write_fraction=0.3, stream_share=0.3
):
    """PageRank: edges streamed, rank arrays read by in-degree (power law)."""

    def _build(self) -> None:
        ranks = _clustered_placement(self.rng, self.npages // 5, jitter=0.5)
        self._power_law_then_streamed(ranks, 0.9)


class XsBench(Workload, name="xsbench", mlp=2.0, write_fraction=0.01):
    """XSBench-like: binary search over a small grid (hot), nuclide grids uniform."""

    def _build(self) -> None:
        n = self.npages
        start, grid = self._hot_region(10)
        w = np.full(n, 0.5 / n)
        depth = np.arange(grid)
        w[start : start + grid] += (
            0.5 * _zipf_weights(grid, 0.7)[self.rng.permutation(depth)]
        )
        self.weights = w / w.sum()


class Liblinear(
    Workload, name="liblinear", mlp=6.0, write_fraction=0.2, stream_share=0.5
):
    """liblinear-like training: streaming over samples, hot model weights."""

    def _build(self) -> None:
        n = self.npages
        start, nw = self._hot_region(20)
        w = np.zeros(n)
        w[start : start + nw] = 1.0 / nw
        self.weights = w
        rest = [(0, start), (start + nw, n - start - nw)]
        self.streams = [_Stream(s, ln) for s, ln in rest if ln > 0]


WORKLOADS: dict[str, Callable[..., Workload]] = {
    w.name: w for w in (Gups, KvZipf, Btree, Bfs, Pagerank, XsBench, Liblinear)
}


def make_workload(
    name: str | Workload, npages: int = 0, seed: int = 0, **options: float
) -> Workload:
    """A workload from a spec; ``options`` go to its constructor (gups: hot_fraction).

    The spec is a registered name (``npages`` is its footprint), ``trace:FILE``
    or ``trace:NAME`` of a shipped trace (a recorded trace,
    :mod:`emu.workloads.trace`; its footprint is the trace's), or a Workload
    instance, returned as it is.

    Raises:
        ValueError: unknown name, or a trace file that cannot be read.
    """
    if isinstance(name, Workload):
        return name
    if name.startswith(TRACE_PREFIX):
        from emu.workloads.trace import TraceWorkload

        try:
            return TraceWorkload.from_file(name[len(TRACE_PREFIX) :], **options)
        except OSError as err:
            raise ValueError(f"workload {name!r}: {err}") from err
    if name not in WORKLOADS:
        raise ValueError(
            f"workload {name!r} unknown; choose from {sorted(WORKLOADS)} "
            f"or {TRACE_PREFIX}FILE"
        )
    return WORKLOADS[name](npages, seed=seed, **options)


def workload_pages(name: str | Workload, npages: int) -> int:
    """The footprint of a spec: a trace's or instance's own, else ``npages``."""
    if isinstance(name, Workload):
        return name.npages
    if name.startswith(TRACE_PREFIX):
        return make_workload(name).npages
    return npages
