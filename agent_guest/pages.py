"""Pages tracked one by one, beside the ranges (pure): hot pages scattered among
cold ones, which no range can separate (a key-value store's hot values among the
others, a B-tree's inner nodes among leaves). docs/guest.md, "Pages resolved one
by one".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent_guest.backend import PAGE_SIZE
from agent_guest.config import ClassifyConfig
from hypertier_common.arrays import F64, I64, U64, BoolArray

__all__ = ["PageTable", "Resolved", "gamma_poisson", "in_sorted"]

_PAGES_PER_MIB = float((1 << 20) // PAGE_SIZE)


@dataclass(frozen=True, eq=False)
class Resolved:
    """Resolved pages of one table (sorted ``addr``): long-memory ``count``,
    ``recent`` count and ``mass`` (decayed like the ranges'), ``density`` and
    its standard error ``noise`` in the ranges' unit, and ``hot`` (selected
    last epoch)."""

    addr: U64
    count: F64
    recent: F64
    mass: F64
    density: F64
    noise: F64
    hot: BoolArray


def in_sorted(x: U64, ref: U64) -> BoolArray:
    """``np.isin(x, ref)`` for a sorted ``ref``: a binary search per element,
    without sorting ``x`` (the candidate lists are long, ``ref`` is sorted)."""
    if ref.shape[0] == 0:
        return np.zeros(x.shape[0], bool)
    i = np.searchsorted(ref, x)
    np.minimum(i, ref.shape[0] - 1, out=i)
    found: BoolArray = ref[i] == x
    return found


def gamma_poisson(
    rng: I64, count: F64, floor: float, pages: F64, z: float
) -> tuple[F64, F64]:
    """Per range of ``pages`` pages, (``B``, ``m``) of a gamma-Poisson prior
    fitted to its pages' long-memory counts (``count`` of the tracked pages
    in ranges ``rng``; every page at least at ``floor``, the untracked ones at
    it): ``m`` the mean count per page, ``B = tau2 / (tau2 + m)`` the weight of
    a page's own count in its rate's estimate, ``tau2`` the variance beyond
    Poisson's less ``z`` standard errors of a Poisson variance over the range's
    pages (0 where its pages vary no more than Poisson noise would)."""
    n = pages.shape[0]
    k = np.maximum(count, floor)
    rest = np.maximum(pages - np.bincount(rng, minlength=n), 0.0)
    m = (np.bincount(rng, weights=k, minlength=n) + floor * rest) / pages
    sq = (np.bincount(rng, weights=k * k, minlength=n) + floor * floor * rest) / pages
    se = np.sqrt((m + 6.0 * m * m + 4.0 * m * m * m) / pages)
    tau2 = np.maximum(sq - m * m - m - z * se, 0.0)
    weight = np.zeros(n)
    np.divide(tau2, tau2 + m, out=weight, where=m > 0.0)
    return weight, m


class PageTable:
    """The tracked pages of one process (at most ``max_tracked_pages``, sorted).

    ``count`` is a long memory, cooled (halved) every ``page_cooling_samples``
    samples rather than every epoch: a page of a hot set of thousands sees a
    sample every few epochs, so only a memory counted in samples resolves it,
    whatever the epoch length. ``recent`` decays like the ranges' counts,
    ``mass`` like their longer-window mass; ``epochs`` counts the epochs in which
    the page had samples while tracked (up to 255); ``seen`` is an 8-epoch
    history; ``hot_addr`` the pages selected hot last epoch (sorted).
    """

    def __init__(self, params: ClassifyConfig) -> None:
        self.params = params
        self.addr = np.empty(0, np.uint64)
        self.count = np.empty(0, np.float64)
        self.recent = np.empty(0, np.float64)
        self.mass = np.empty(0, np.float64)
        self.epochs = np.empty(0, np.float64)
        self.seen = np.empty(0, np.uint8)
        self.total = 0.0  # all samples, cooled like count
        self.hot_addr = np.empty(0, np.uint64)
        self._since_cooling = 0.0
        self._pending: list[tuple[U64, F64]] = []
        self._resolved: tuple[float, Resolved] | None = None

    def invalidate(self) -> None:
        """Forget the cached :meth:`resolved` (the inputs changed)."""
        self._resolved = None

    def set_hot(self, addr: U64) -> None:
        """The pages selected hot this epoch (sorted)."""
        self.hot_addr = addr
        self.invalidate()

    def track(self, addr: U64) -> None:
        """Count one batch of sample addresses (at the end of the epoch)."""
        # A strided subsample bounds the sort; each kept sample stands for ``step``.
        step = max(1, addr.shape[0] // self.params.page_track_samples)
        pages = addr[::step] & ~np.uint64(PAGE_SIZE - 1)
        u, c = np.unique(pages, return_counts=True)
        self._pending.append((u, c.astype(np.float64) * step))
        self.total += float(addr.shape[0])
        self._since_cooling += float(addr.shape[0])

    def end_epoch(self) -> None:
        """Fold the epoch's samples in; cool every ``page_cooling_samples``."""
        p = self.params
        parts_a = [self.addr, *(u for u, _ in self._pending)]
        new_c = [c for _, c in self._pending]
        self._pending = []
        u, inv = np.unique(np.concatenate(parts_a), return_inverse=True)
        inv = inv.reshape(-1)
        n_old = self.addr.shape[0]
        fresh = np.concatenate(new_c) if new_c else np.empty(0)
        m = u.shape[0]
        cnt = np.bincount(
            inv, weights=np.concatenate((self.count, fresh)), minlength=m
        ).astype(np.float64)
        recent = np.bincount(
            inv,
            weights=np.concatenate((self.recent * p.decay, fresh)),
            minlength=m,
        ).astype(np.float64)
        pmass = np.bincount(
            inv,
            weights=np.concatenate((self.mass * p.demand_decay, fresh)),
            minlength=m,
        ).astype(np.float64)
        epochs = np.zeros(m)
        epochs[inv[:n_old]] = self.epochs
        seen = np.zeros(m, np.uint8)
        seen[inv[:n_old]] = np.left_shift(self.seen, 1)
        new = inv[n_old:]
        seen[new] = np.bitwise_or(seen[new], 1)
        epochs[np.unique(new)] += 1.0
        np.minimum(epochs, 255.0, out=epochs)
        while self._since_cooling >= p.page_cooling_samples:
            self._since_cooling -= p.page_cooling_samples
            cnt *= 0.5
            self.total *= 0.5
        keep = (cnt >= 0.5) | (recent >= 0.5)
        u, cnt, recent, pmass, epochs, seen = (
            u[keep],
            cnt[keep],
            recent[keep],
            pmass[keep],
            epochs[keep],
            seen[keep],
        )
        if p.max_tracked_pages == 0:
            keep = np.zeros(u.shape[0], bool)
        elif u.shape[0] > p.max_tracked_pages:
            top = np.argpartition(-cnt, p.max_tracked_pages - 1)[: p.max_tracked_pages]
            keep = np.zeros(u.shape[0], bool)
            keep[top] = True
        else:
            keep = np.ones(u.shape[0], bool)
        self.addr, self.count = u[keep], cnt[keep]
        self.recent, self.epochs = recent[keep], epochs[keep]
        self.mass = pmass[keep]
        self.seen = seen[keep]
        self.invalidate()

    def floor(self) -> float:
        """The count below which an untracked page's count may lie: the least
        tracked count once the table is full (the others were dropped for
        it), else 0 (only counts under 1/2 were dropped)."""
        if self.addr.shape[0] and self.addr.shape[0] >= self.params.max_tracked_pages:
            return float(self.count.min())
        return 0.0

    def resolved(self, recent_total: float) -> Resolved:
        """Tracked pages whose own samples say how hot they are.

        A page is resolved with at least ``hot_page_min_samples`` samples in its
        long memory over at least ``hot_page_min_epochs`` epochs (one burst is
        not reuse), unless it has gone quiet: no sample in the last 8 epochs
        where its long-memory rate predicted 3 or more (then the long memory is
        stale, e.g. after a phase change, and the page falls back to its range).
        Its ``density`` is its long-memory share of this process's samples, in
        the ranges' unit (recent samples per MiB, from ``recent_total``, the
        sum of the ranges' recent counts), so pages and ranges rank on one
        scale.
        """
        if self._resolved is not None and self._resolved[0] == recent_total:
            return self._resolved[1]
        p = self.params
        total = max(self.total, 1.0)
        per_epoch = recent_total * (1.0 - p.decay)
        share = self.count / total
        quiet = (self.seen == 0) & (8.0 * share * per_epoch >= 3.0)
        ok = (
            (self.count >= p.hot_page_min_samples)
            & (self.epochs >= p.hot_page_min_epochs)
            & ~quiet
        )
        addr = self.addr[ok]
        cnt = self.count[ok]
        scale = recent_total / total * _PAGES_PER_MIB
        dens = cnt * scale
        noise = np.sqrt(cnt + 1.0) * scale
        hot = in_sorted(addr, self.hot_addr)
        res = Resolved(addr, cnt, self.recent[ok], self.mass[ok], dens, noise, hot)
        self._resolved = (recent_total, res)
        return res
