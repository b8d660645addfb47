"""Hotness classification over ranges of a process's virtual address space (pure).

Each target process has a :class:`RangeTable`: numpy arrays of range starts/ends
and decayed sample counts. Samples are binned with ``searchsorted``; ranges split
where one half is clearly hotter and merge where neighbours agree; selection ranks
ranges by access density and keeps the hot set within the fast allotment, with
hysteresis. Work is O(ranges + samples), independent of memory size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent_guest.backend import PAGE_SIZE, Vma
from agent_guest.config import ClassifyConfig
from agent_guest.pages import PageTable, Resolved, gamma_poisson
from hypertier_common.arrays import F64, I64, U8, U64, BoolArray

__all__ = ["RangeTable", "Residual"]

# Standard errors of the Poisson variance a range's count variance must exceed
# before its pages' own counts are believed (RangeTable.dispersion).
DISPERSION_Z = 2.0


def _empty_u64() -> U64:
    return np.empty(0, np.uint64)


# Bits set in each byte value: epochs with samples, out of an 8-epoch history.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


@dataclass(frozen=True, eq=False)
class Residual:
    """Per range, densities (and standard errors) of its pages not resolved:
    ``hot`` for ranking it up (lesser of two time scales), ``cold`` for ranking
    it down (greater); ``size``, the bytes of those pages."""

    hot: F64
    hot_sd: F64
    cold: F64
    cold_sd: F64
    size: F64


def _reused(seen: U8, params: ClassifyConfig) -> BoolArray:
    """Sampled in at least ``reuse_epochs`` of the last ``reuse_window`` epochs.

    One pass of a sequential scan touches a range (or page) in one epoch, two if
    it straddles a boundary: a burst of samples, then nothing. Real reuse shows
    up epoch after epoch. Requiring it keeps streams from displacing the
    working set, the failure LRU-like and count-only policies share.
    """
    bits = _POPCOUNT[np.bitwise_and(seen, params.window_mask)]
    ok: BoolArray = bits >= params.reuse_epochs
    return ok


class _Scratch:
    """Work arrays for ``size`` samples."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.u1 = np.empty(size, np.uint64)
        self.u2 = np.empty(size, np.uint64)
        self.i1 = np.empty(size, np.int64)
        self.b1 = np.empty(size, bool)
        self.b2 = np.empty(size, bool)


class RangeTable:
    """The ranges of one process: ``start``/``end`` (bytes, page aligned, sorted,
    non-overlapping), decayed ``count``, per-half counts of the current epoch, and
    ``hot`` (selected last epoch, for hysteresis)."""

    def __init__(self, params: ClassifyConfig) -> None:
        self.params = params
        self.start = _empty_u64()
        self.end = _empty_u64()
        self.count = np.empty(0, np.float64)
        self.left = np.empty(0, np.float64)
        self.right = np.empty(0, np.float64)
        self.hot = np.empty(0, bool)
        # Samples decayed by ``demand_decay`` per epoch: a longer memory than
        # ``count``, for the demand estimate (sparse samples need time to cover
        # a large hot set).
        self.mass = np.empty(0, np.float64)
        # Sample history: bit i set = samples in the epoch i epochs ago.
        self.seen = np.empty(0, np.uint8)
        self.epoch = 0
        self._grid: tuple[int, int, I64, BoolArray] | None = None
        self._mid = _empty_u64()
        self._next_start = _empty_u64()
        self._any_multi = False
        self._ws: _Scratch | None = None
        # pages tracked one by one, for hot pages ranges cannot separate
        self.pages = PageTable(params)
        # RangeTable.dispersion and page_mean until the ranges or the page
        # counts change
        self._dispersion: tuple[F64, F64] | None = None

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @property
    def size_bytes(self) -> F64:
        return (self.end - self.start).astype(np.float64)

    @property
    def density(self) -> F64:
        """Decayed samples per MiB."""
        return self.count / np.maximum(self.size_bytes, 1.0) * float(1 << 20)

    @property
    def reused(self) -> BoolArray:
        """Ranges with samples in enough recent epochs (see ``_reused``)."""
        return _reused(self.seen, self.params)

    @property
    def density_std(self) -> F64:
        """Poisson standard error of ``density`` (same unit)."""
        return (
            np.sqrt(self.count + 1.0)
            / np.maximum(self.size_bytes, 1.0)
            * float(1 << 20)
        )

    def set_vmas(self, vmas: Sequence[Vma], max_ranges: int | None = None) -> None:
        """Rebuild the ranges from ``vmas``, keeping counts where ranges survive.

        A VMA larger than its fair share of ``max_ranges`` starts as several ranges
        so a split has somewhere to begin.
        """
        budget = max_ranges or self.params.max_ranges
        vs = sorted((v for v in vmas if v.end > v.start), key=lambda v: v.start)
        if not vs:
            self._assign(
                _empty_u64(),
                _empty_u64(),
                np.empty(0),
                np.empty(0, bool),
                np.empty(0, np.uint8),
                np.empty(0),
            )
            return
        starts = np.array([v.start for v in vs], np.uint64)
        ends = np.array([v.end for v in vs], np.uint64)
        sizes = (ends - starts).astype(np.float64)
        share = np.maximum(1, np.floor(sizes / sizes.sum() * budget / 2)).astype(
            np.int64
        )
        min_pages = max(1, self.params.min_range_bytes // PAGE_SIZE)
        pages = ((ends - starts) // PAGE_SIZE).astype(np.int64)
        pieces = np.clip(np.minimum(share, pages // min_pages), 1, None)
        idx = np.repeat(np.arange(len(vs)), pieces)
        first = np.cumsum(pieces) - pieces
        k = np.arange(idx.shape[0]) - np.repeat(first, pieces)
        step = pages[idx] // pieces[idx]
        new_start = starts[idx] + (k * step * PAGE_SIZE).astype(np.uint64)
        last = k == pieces[idx] - 1
        new_end = np.where(
            last, ends[idx], new_start + (step * PAGE_SIZE).astype(np.uint64)
        )
        # Carry counts over: each new range inherits the density of the old range
        # holding its start (a cheap O(ranges log ranges) approximation).
        count = np.zeros(new_start.shape[0])
        mass = np.zeros(new_start.shape[0])
        hot = np.zeros(new_start.shape[0], bool)
        seen = np.zeros(new_start.shape[0], np.uint8)
        if len(self):
            j = np.searchsorted(self.start, new_start, "right") - 1
            inside = (j >= 0) & (new_start < self.end[np.maximum(j, 0)])
            jj = np.maximum(j, 0)
            old_size = np.maximum(self.size_bytes[jj], 1.0)
            size = (new_end - new_start).astype(np.float64)
            count = np.where(inside, self.count[jj] / old_size * size, 0.0)
            mass = np.where(inside, self.mass[jj] / old_size * size, 0.0)
            hot = inside & self.hot[jj]
            seen = np.where(inside, self.seen[jj], 0).astype(np.uint8)
        self._assign(new_start, new_end.astype(np.uint64), count, hot, seen, mass)

    def _assign(
        self,
        start: U64,
        end: U64,
        count: F64,
        hot: BoolArray,
        seen: U8,
        mass: F64,
    ) -> None:
        self._grid = None
        self._dispersion = None
        self.pages.invalidate()  # resolved densities use the ranges' counts
        self.start, self.end = start, end
        self.count = count.astype(np.float64)
        self.mass = mass.astype(np.float64)
        self.hot = hot.astype(bool)
        self.seen = seen.astype(np.uint8)
        self.left = np.zeros(start.shape[0])
        self.right = np.zeros(start.shape[0])

    def _build_grid(self) -> None:
        """A bucket table over [start[0], end[-1]) with ~16 buckets per range, so a
        sample finds its range by one gather (plus one compare) instead of a
        binary search. Its size follows the number of ranges, not of bytes."""
        n = len(self)
        lo, hi = int(self.start[0]), int(self.end[-1])
        want = max(1024, 16 * n)
        shift = max(12, ((hi - lo) // want).bit_length())
        g = ((hi - lo) >> shift) + 1
        bstart = np.uint64(lo) + (np.arange(g, dtype=np.uint64) << np.uint64(shift))
        first = np.searchsorted(self.start, bstart, "right").astype(np.int64) - 1
        after = np.searchsorted(
            self.start, bstart + np.uint64(1 << shift), "left"
        ).astype(np.int64)
        # buckets holding more than one range start fall back to searchsorted
        multi = (after - first) > 2
        self._grid = (lo, shift, np.maximum(first, 0), multi)
        self._any_multi = bool(multi.any())
        self._mid = self.start + (self.end - self.start) // np.uint64(2)
        self._next_start = np.append(self.start[1:], np.uint64(2**64 - 1))

    def locate(self, addr: U64) -> I64:
        """Index of the range holding each address, or -1."""
        if len(self) == 0:
            return np.full(addr.shape[0], -1, np.int64)
        j, ok = self._locate(addr)
        return np.where(ok, j, -1)

    def _scratch(self, n: int) -> _Scratch:
        # Reused across epochs: fresh multi-MiB arrays cost a page fault and a
        # zeroing per page, more than the arithmetic done in them.
        if self._ws is None or self._ws.size < n:
            self._ws = _Scratch(max(n, 1 << 16))
        return self._ws

    def _locate(self, addr: U64) -> tuple[I64, BoolArray]:
        """(range index, whether the address is inside that range) as views into
        the scratch buffers. By construction start[j] <= addr for addr >= lo."""
        if self._grid is None:
            self._build_grid()
        assert self._grid is not None
        lo, shift, first, multi = self._grid
        n = int(addr.shape[0])
        ws = self._scratch(n)
        b, tmp, j, ok, ok2 = ws.u1[:n], ws.u2[:n], ws.i1[:n], ws.b1[:n], ws.b2[:n]
        np.subtract(addr, np.uint64(lo), out=b)  # wraps below lo: checked below
        np.right_shift(b, np.uint64(shift), out=b)
        np.minimum(b, np.uint64(first.shape[0] - 1), out=b)
        np.take(first, b.view(np.int64), out=j, mode="clip")
        np.take(self._next_start, j, out=tmp, mode="clip")
        np.greater_equal(addr, tmp, out=ok)
        np.add(j, ok, out=j)
        if self._any_multi:
            slow = multi[b.view(np.int64)]
            if slow.any():
                j[slow] = np.maximum(
                    np.searchsorted(self.start, addr[slow], "right") - 1, 0
                )
        np.take(self.end, j, out=tmp, mode="clip")
        np.less(addr, tmp, out=ok)
        np.greater_equal(addr, np.uint64(lo), out=ok2)
        np.logical_and(ok, ok2, out=ok)
        return j, ok

    def add_samples(self, addr: U64) -> int:
        """Bin sample addresses into ranges (and their halves); return how many
        fell in a range. O(samples), vectorised."""
        n = len(self)
        if n == 0 or addr.shape[0] == 0:
            return 0
        j, ok = self._locate(addr)
        ws = self._scratch(0)
        mid, right = ws.u1[: j.shape[0]], ws.b2[: j.shape[0]]
        np.take(self._mid, j, out=mid, mode="clip")
        np.greater_equal(addr, mid, out=right)
        np.multiply(j, 2, out=j)
        np.add(j, right, out=j)
        np.logical_not(ok, out=right)
        np.putmask(j, right, 2 * n)
        both = np.bincount(j, minlength=2 * n + 1)[: 2 * n].reshape(n, 2)
        self.left += both[:, 0]
        self.right += both[:, 1]
        self.pages.track(addr)
        return int(both.sum())

    def hot_pages(self) -> tuple[U64, F64]:
        """Resolved pages (see :meth:`resolved`) and their long-memory counts."""
        r = self.resolved()
        return r.addr, r.count

    def resolved(self) -> Resolved:
        """This table's resolved pages (:meth:`PageTable.resolved`)."""
        return self.pages.resolved(float(self.count.sum()))

    def dispersion(self) -> F64:
        """Per range, how far its pages' own long-memory counts can be believed
        against the range's estimate: the empirical-Bayes (gamma-Poisson)
        weight ``B`` in [0, 1] of a page's count in its rate's estimate.

        A range whose pages' counts vary no more than Poisson noise would (a
        uniform or streamed region) has ``B`` 0: a page that drew more samples
        there was lucky, not hot. Where they vary more (hot pages scattered
        among cold ones), ``B = tau2 / (tau2 + m)`` (:func:`gamma_poisson`,
        ``DISPERSION_Z`` standard errors). Pages not tracked count at the tracking floor
        (:meth:`PageTable.floor`) and tracked ones at least at it: censoring
        at the floor adds no variance, so a full page table cannot fake
        dispersion. Cached until the ranges or the pages change.
        """
        return self._empirical_bayes()[0]

    def page_mean(self) -> F64:
        """Per range, the mean long-memory count of its pages (tracked ones at
        least at the tracking floor, the others at it): the prior mean that
        :meth:`dispersion`'s weight shrinks a page's own count toward."""
        return self._empirical_bayes()[1]

    def _empirical_bayes(self) -> tuple[F64, F64]:
        """(:meth:`dispersion`, :meth:`page_mean`), cached."""
        if self._dispersion is not None:
            return self._dispersion
        n, pt = len(self), self.pages
        if not (n and pt.addr.shape[0]):
            self._dispersion = (np.zeros(n), np.zeros(n))
            return self._dispersion
        pages = np.maximum(self.size_bytes / PAGE_SIZE, 1.0)
        j = self.locate(pt.addr)
        inside = j >= 0
        self._dispersion = gamma_poisson(
            j[inside], pt.count[inside], pt.floor(), pages, DISPERSION_Z
        )
        return self._dispersion

    def residual(self) -> Residual:
        """Per range, the density of the pages not resolved: the range's samples
        minus its resolved pages' samples, over the rest of its bytes (a range
        whose samples all come from a few resolved pages is cold for the rest
        of its pages), on two time scales.

        ``hot`` is the lesser of the recent (``decay``) and the longer-window
        (``demand_decay``, scaled to the recent unit) estimate, ``cold`` the
        greater: a range is promoted only when hot on both scales, demoted only
        when cold on both. A front of activity that sweeps the address space
        (B-tree inserts, a log, an allocator's fresh pages) is hot for a few
        epochs only: on the recent scale alone the mover would chase it, its
        pages cold again by the time they arrive.
        """
        n = len(self)
        mib = float(1 << 20)
        r = self.resolved()
        if n == 0 or r.addr.shape[0] == 0:
            cnt, mass, size = self.count, self.mass, self.size_bytes
        else:
            j = self.locate(r.addr)
            inside = j >= 0
            jj = j[inside]
            npages = np.bincount(jj, minlength=n).astype(np.float64)
            cnt = np.maximum(
                self.count - np.bincount(jj, weights=r.recent[inside], minlength=n),
                0.0,
            )
            mass = np.maximum(
                self.mass - np.bincount(jj, weights=r.mass[inside], minlength=n), 0.0
            )
            size = np.maximum(self.size_bytes - npages * PAGE_SIZE, float(PAGE_SIZE))
        total_mass = float(self.mass.sum())
        scale = float(self.count.sum()) / total_mass if total_mass > 0 else 0.0
        recent = cnt / size * mib
        recent_sd = np.sqrt(cnt + 1.0) / size * mib
        longer = mass * scale / size * mib
        longer_sd = np.sqrt(mass + 1.0) * scale / size * mib
        low = longer < recent
        return Residual(
            np.where(low, longer, recent),
            np.where(low, longer_sd, recent_sd),
            np.where(low, recent, longer),
            np.where(low, recent_sd, longer_sd),
            size,
        )

    def epoch_samples(self) -> tuple[float, float]:
        """This epoch's samples so far: on the ranges selected hot, and in all."""
        n = self.left + self.right
        return float(n[self.hot].sum()), float(n.sum())

    def end_epoch(self) -> None:
        """Fold this epoch's samples into the decayed counts, then split and merge."""
        p = self.params
        self.count = self.count * p.decay + self.left + self.right
        self.mass = self.mass * p.demand_decay + self.left + self.right
        sampled = ((self.left + self.right) > 0).astype(np.uint8)
        self.seen = np.left_shift(self.seen, 1) | sampled
        self.pages.end_epoch()
        self._dispersion = None  # the page counts changed; split and merge follow
        self._split()
        self._merge()
        self.left = np.zeros(len(self))
        self.right = np.zeros(len(self))
        self.epoch += 1

    def _split(self) -> None:
        p = self.params
        total = self.left + self.right
        diff = np.abs(self.left - self.right)
        size = self.end - self.start
        can = (
            (total >= p.split_min_samples)
            & (diff > p.split_z * np.sqrt(np.maximum(total, 1.0)))
            & (size >= np.uint64(2 * p.min_range_bytes))
        )
        room = p.max_ranges - len(self)
        if room <= 0 or not can.any():
            return
        cand = np.flatnonzero(can)
        if cand.shape[0] > room:  # split the most lopsided first
            cand = cand[np.argsort(-diff[cand], kind="stable")[:room]]
            cand.sort()
        mid = self.start[cand] + (size[cand] // np.uint64(2 * PAGE_SIZE)) * np.uint64(
            PAGE_SIZE
        )
        frac = self.left[cand] / np.maximum(total[cand], 1.0)
        gained = np.zeros(len(self), np.int64)
        gained[cand] = 1
        # Old range i lands after every second half created before it.
        pos = np.arange(len(self)) + np.cumsum(gained) - gained
        n_new = len(self) + cand.shape[0]
        start = np.empty(n_new, np.uint64)
        end = np.empty(n_new, np.uint64)
        count = np.empty(n_new)
        mass = np.empty(n_new)
        hot = np.empty(n_new, bool)
        seen = np.empty(n_new, np.uint8)
        lt = np.empty(n_new)
        rt = np.empty(n_new)
        start[pos], end[pos], count[pos] = self.start, self.end, self.count
        mass[pos] = self.mass
        hot[pos], lt[pos], rt[pos] = self.hot, self.left, self.right
        seen[pos] = self.seen
        # The first half keeps slot pos[c]; the second half goes to pos[c] + 1.
        first = pos[cand]
        second = first + 1
        start[second], end[second] = mid, self.end[cand]
        end[first] = mid
        count[second] = self.count[cand] * (1.0 - frac)
        count[first] = self.count[cand] * frac
        mass[second] = self.mass[cand] * (1.0 - frac)
        mass[first] = self.mass[cand] * frac
        hot[second] = self.hot[cand]
        # Each half keeps the history and has samples this epoch only if it had.
        older = self.seen[cand] & np.uint8(0xFE)
        seen[first] = older | (self.left[cand] > 0)
        seen[second] = older | (self.right[cand] > 0)
        lt[second] = rt[second] = self.right[cand] / 2
        lt[first] = rt[first] = self.left[cand] / 2
        self.start, self.end, self.count, self.hot = start, end, count, hot
        self.seen, self.mass = seen, mass
        self.left, self.right = lt, rt
        self._grid = None

    def _merge(self) -> None:
        """Merge agreeing neighbours, only while at least half the range budget
        is used: merging is there to make room for splits, and large ranges hide
        scans (a scan crossing a 64 MiB range over several epochs looks reused;
        crossing 2 MiB ranges, it does not)."""
        p = self.params
        n = len(self)
        if n < 2 or n < p.max_ranges // 2:
            return
        dens = self.density
        a, b = dens[:-1], dens[1:]
        agree = np.abs(a - b) <= p.merge_tolerance * np.maximum(np.maximum(a, b), 1e-9)
        agree |= (a < 1e-3) & (b < 1e-3)
        agree &= self.end[:-1] == self.start[1:]
        agree &= self.hot[:-1] == self.hot[1:]
        # Pair (i, i+1) only where i has the parity of this epoch, so pairs never
        # overlap; the other parity gets its turn next epoch.
        agree &= (np.arange(n - 1) % 2) == (self.epoch % 2)
        if not agree.any():
            return
        i = np.flatnonzero(agree)
        keep = np.ones(n, bool)
        keep[i + 1] = False
        self.end[i] = self.end[i + 1]
        self.count[i] += self.count[i + 1]
        self.mass[i] += self.mass[i + 1]
        self.seen[i] &= self.seen[i + 1]  # reused only where both halves were
        self.left[i] += self.left[i + 1]
        self.right[i] += self.right[i + 1]
        self.start, self.end = self.start[keep], self.end[keep]
        self.count, self.hot = self.count[keep], self.hot[keep]
        self.mass = self.mass[keep]
        self.seen = self.seen[keep]
        self.left, self.right = self.left[keep], self.right[keep]
        self._grid = None
