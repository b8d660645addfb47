"""Hotness classification over ranges of a process's virtual address space (pure).

Each target process has a :class:`RangeTable`: numpy arrays of range starts/ends
and decayed sample counts. Samples are binned with ``searchsorted``; ranges split
where one half is clearly hotter and merge where neighbours agree; selection ranks
ranges by access density and keeps the hot set within the fast allotment, with
hysteresis. Work is O(ranges + samples), independent of memory size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent_guest.backend import PAGE_SIZE, Vma
from agent_guest.config import ClassifyConfig

__all__ = [
    "RangeTable",
    "Residual",
    "Resolved",
    "Selection",
    "coverage_bytes",
    "in_sorted",
    "select_hot",
]


def _empty_u64() -> npt.NDArray[np.uint64]:
    return np.empty(0, np.uint64)


# Bits set in each byte value: epochs with samples, out of an 8-epoch history.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


_PAGES_PER_MIB = float((1 << 20) // PAGE_SIZE)


@dataclass(frozen=True, eq=False)
class Resolved:
    """Resolved pages of one table (sorted ``addr``): long-memory ``count``,
    ``recent`` count and ``mass`` (decayed like the ranges'), ``density`` and
    its standard error ``noise`` in the ranges' unit, and ``hot`` (selected
    last epoch)."""

    addr: npt.NDArray[np.uint64]
    count: npt.NDArray[np.float64]
    recent: npt.NDArray[np.float64]
    mass: npt.NDArray[np.float64]
    density: npt.NDArray[np.float64]
    noise: npt.NDArray[np.float64]
    hot: npt.NDArray[np.bool_]


def in_sorted(
    x: npt.NDArray[np.uint64], ref: npt.NDArray[np.uint64]
) -> npt.NDArray[np.bool_]:
    """``np.isin(x, ref)`` for a sorted ``ref``: a binary search per element,
    without sorting ``x`` (the candidate lists are long, ``ref`` is sorted)."""
    if ref.shape[0] == 0:
        return np.zeros(x.shape[0], bool)
    i = np.searchsorted(ref, x)
    np.minimum(i, ref.shape[0] - 1, out=i)
    found: npt.NDArray[np.bool_] = ref[i] == x
    return found


@dataclass(frozen=True, eq=False)
class Residual:
    """Per range, densities (and standard errors) of its pages not resolved:
    ``hot`` for ranking it up (lesser of two time scales), ``cold`` for ranking
    it down (greater)."""

    hot: npt.NDArray[np.float64]
    hot_sd: npt.NDArray[np.float64]
    cold: npt.NDArray[np.float64]
    cold_sd: npt.NDArray[np.float64]


def _reused(
    seen: npt.NDArray[np.uint8], params: ClassifyConfig
) -> npt.NDArray[np.bool_]:
    """Sampled in at least ``reuse_epochs`` of the last ``reuse_window`` epochs.

    One pass of a sequential scan touches a range (or page) in one epoch, two if
    it straddles a boundary: a burst of samples, then nothing. Real reuse shows
    up epoch after epoch. Requiring it keeps streams from displacing the
    working set, the failure LRU-like and count-only policies share.
    """
    bits = _POPCOUNT[np.bitwise_and(seen, params.window_mask)]
    ok: npt.NDArray[np.bool_] = bits >= params.reuse_epochs
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
        self._grid: (
            tuple[int, int, npt.NDArray[np.int64], npt.NDArray[np.bool_]] | None
        ) = None
        self._mid = _empty_u64()
        self._next_start = _empty_u64()
        self._any_multi = False
        self._ws: _Scratch | None = None
        # Pages tracked one by one (bounded by max_tracked_pages), so hot pages
        # scattered among cold ones are found where ranges cannot separate them.
        # ``page_count`` is a long memory, cooled (halved) every
        # ``page_cooling_samples`` samples rather than every epoch: a page of a
        # hot set of thousands sees a sample every few epochs, so only a memory
        # counted in samples resolves it, whatever the epoch length. ``page_recent``
        # decays like the ranges' counts; ``page_epochs`` counts the epochs in
        # which the page had samples while tracked (up to 255).
        self.page_addr = _empty_u64()
        self.page_count = np.empty(0, np.float64)
        self.page_recent = np.empty(0, np.float64)
        self.page_mass = np.empty(0, np.float64)  # decays like the ranges' mass
        self.page_epochs = np.empty(0, np.float64)
        self.page_seen = np.empty(0, np.uint8)
        self.page_total = 0.0  # all samples, cooled like page_count
        self._since_cooling = 0.0
        self._pending: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]] = []
        self._resolved: Resolved | None = None
        # pages selected hot last epoch (sorted), for hysteresis
        self.hot_page_addr = _empty_u64()

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @property
    def size_bytes(self) -> npt.NDArray[np.float64]:
        return (self.end - self.start).astype(np.float64)

    @property
    def density(self) -> npt.NDArray[np.float64]:
        """Decayed samples per MiB."""
        return self.count / np.maximum(self.size_bytes, 1.0) * float(1 << 20)

    @property
    def reused(self) -> npt.NDArray[np.bool_]:
        """Ranges with samples in enough recent epochs (see ``_reused``)."""
        return _reused(self.seen, self.params)

    @property
    def density_std(self) -> npt.NDArray[np.float64]:
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
        start: npt.NDArray[np.uint64],
        end: npt.NDArray[np.uint64],
        count: npt.NDArray[np.float64],
        hot: npt.NDArray[np.bool_],
        seen: npt.NDArray[np.uint8],
        mass: npt.NDArray[np.float64],
    ) -> None:
        self._grid = None
        self._resolved = None
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

    def locate(self, addr: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
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

    def _locate(
        self, addr: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
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

    def add_samples(self, addr: npt.NDArray[np.uint64]) -> int:
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
        self._track_pages(addr)
        return int(both.sum())

    def _track_pages(self, addr: npt.NDArray[np.uint64]) -> None:
        # A strided subsample bounds the sort; each kept sample stands for ``step``.
        step = max(1, addr.shape[0] // self.params.page_track_samples)
        pages = addr[::step] & ~np.uint64(PAGE_SIZE - 1)
        u, c = np.unique(pages, return_counts=True)
        self._pending.append((u, c.astype(np.float64) * step))
        self.page_total += float(addr.shape[0])
        self._since_cooling += float(addr.shape[0])

    def hot_pages(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
        """Resolved pages (see :meth:`resolved`) and their long-memory counts."""
        r = self.resolved()
        return r.addr, r.count

    def _end_pages(self) -> None:
        p = self.params
        parts_a = [self.page_addr, *(u for u, _ in self._pending)]
        new_c = [c for _, c in self._pending]
        self._pending = []
        u, inv = np.unique(np.concatenate(parts_a), return_inverse=True)
        inv = inv.reshape(-1)
        n_old = self.page_addr.shape[0]
        fresh = np.concatenate(new_c) if new_c else np.empty(0)
        m = u.shape[0]
        cnt = np.bincount(
            inv, weights=np.concatenate((self.page_count, fresh)), minlength=m
        ).astype(np.float64)
        recent = np.bincount(
            inv,
            weights=np.concatenate((self.page_recent * p.decay, fresh)),
            minlength=m,
        ).astype(np.float64)
        pmass = np.bincount(
            inv,
            weights=np.concatenate((self.page_mass * p.demand_decay, fresh)),
            minlength=m,
        ).astype(np.float64)
        epochs = np.zeros(m)
        epochs[inv[:n_old]] = self.page_epochs
        seen = np.zeros(m, np.uint8)
        seen[inv[:n_old]] = np.left_shift(self.page_seen, 1)
        new = inv[n_old:]
        seen[new] = np.bitwise_or(seen[new], 1)
        epochs[np.unique(new)] += 1.0
        np.minimum(epochs, 255.0, out=epochs)
        while self._since_cooling >= p.page_cooling_samples:
            self._since_cooling -= p.page_cooling_samples
            cnt *= 0.5
            self.page_total *= 0.5
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
        self.page_addr, self.page_count = u[keep], cnt[keep]
        self.page_recent, self.page_epochs = recent[keep], epochs[keep]
        self.page_mass = pmass[keep]
        self.page_seen = seen[keep]
        self._resolved = None

    def resolved(self) -> Resolved:
        """Tracked pages whose own samples say how hot they are.

        A page is resolved with at least ``hot_page_min_samples`` samples in its
        long memory over at least ``hot_page_min_epochs`` epochs (one burst is
        not reuse), unless it has gone quiet: no sample in the last 8 epochs
        where its long-memory rate predicted 3 or more (then the long memory is
        stale, e.g. after a phase change, and the page falls back to its range).
        Its ``density`` is its long-memory share of this process's samples, in
        the ranges' unit (recent samples per MiB), so pages and ranges rank on
        one scale.
        """
        if self._resolved is not None:
            return self._resolved
        p = self.params
        total = max(self.page_total, 1.0)
        recent_total = float(self.count.sum())
        per_epoch = recent_total * (1.0 - p.decay)
        share = self.page_count / total
        quiet = (self.page_seen == 0) & (8.0 * share * per_epoch >= 3.0)
        ok = (
            (self.page_count >= p.hot_page_min_samples)
            & (self.page_epochs >= p.hot_page_min_epochs)
            & ~quiet
        )
        addr = self.page_addr[ok]
        cnt = self.page_count[ok]
        scale = recent_total / total * _PAGES_PER_MIB
        dens = cnt * scale
        noise = np.sqrt(cnt + 1.0) * scale
        hot = in_sorted(addr, self.hot_page_addr)
        res = Resolved(
            addr, cnt, self.page_recent[ok], self.page_mass[ok], dens, noise, hot
        )
        self._resolved = res
        return res

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
        )

    def end_epoch(self) -> None:
        """Fold this epoch's samples into the decayed counts, then split and merge."""
        p = self.params
        self.count = self.count * p.decay + self.left + self.right
        self.mass = self.mass * p.demand_decay + self.left + self.right
        sampled = ((self.left + self.right) > 0).astype(np.uint8)
        self.seen = np.left_shift(self.seen, 1) | sampled
        self._end_pages()
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


@dataclass(frozen=True, eq=False)
class Selection:
    """Hot ranges chosen this epoch: per pid a bool mask over its table, ordered
    lists for the exchange, and the hot-set size estimate."""

    hot: Mapping[int, npt.NDArray[np.bool_]]
    hot_bytes: int
    demand_bytes: int


def select_hot(
    tables: Mapping[int, RangeTable], capacity_bytes: int, hysteresis: float
) -> Selection:
    """Pick the densest units over all processes that fit ``capacity_bytes``.

    Units are resolved pages (:meth:`RangeTable.resolved`, each with its own
    density) and ranges (the density of their other pages,
    :meth:`RangeTable.residual`), ranked on one scale. Units hot last epoch rank
    with density x (1 + hysteresis), so a newcomer must be clearly hotter to
    displace them (no ping-pong). Units with no samples are never hot, and a
    range not hot yet must show reuse (samples in ``reuse_epochs`` of the last
    ``reuse_window`` epochs) first. Updates each table's ``hot`` mask and
    ``hot_page_addr``. ``demand_bytes`` is what the guest would place on the
    fast tier if it had room (:func:`coverage_bytes` of the long-window sample
    mass), whatever it holds now: the demand reported to the host.
    """
    pids = list(tables)
    if not pids:
        return Selection({}, 0, 0)
    res = [tables[p].resolved() for p in pids]
    resid = [tables[p].residual() for p in pids]
    # A range hot last epoch stays while either time scale says so; a newcomer
    # needs both (Residual).
    r_dens = np.concatenate(
        [
            np.where(tables[p].hot, r.cold, r.hot)
            for p, r in zip(pids, resid, strict=True)
        ]
    )
    r_size = np.concatenate(
        [
            np.maximum(
                tables[p].size_bytes - _resolved_bytes(tables[p], r), float(PAGE_SIZE)
            )
            for p, r in zip(pids, res, strict=True)
        ]
    )
    n_ranges = r_dens.shape[0]
    dens = np.concatenate([r_dens, *(r.density for r in res)])
    prev = np.concatenate([*(tables[p].hot for p in pids), *(r.hot for r in res)])
    size = np.concatenate([r_size, np.full(dens.shape[0] - n_ranges, float(PAGE_SIZE))])
    reused = np.concatenate(
        [
            *(tables[p].reused for p in pids),
            np.ones(dens.shape[0] - n_ranges, bool),  # resolved: reused by definition
        ]
    )
    lens = [len(tables[p]) for p in pids]
    plens = [r.addr.shape[0] for r in res]
    owner = np.concatenate(
        [np.repeat(np.arange(len(pids)), lens), np.repeat(np.arange(len(pids)), plens)]
    )
    score = dens * np.where(prev, 1.0 + hysteresis, 1.0)
    sampled = dens > 1e-3
    active = sampled & (prev | reused)
    order = np.argsort(-score, kind="stable")
    order = order[active[order]]
    fits = np.cumsum(size[order]) <= capacity_bytes
    chosen = np.zeros(dens.shape[0], bool)
    chosen[order[fits]] = True
    hot: dict[int, npt.NDArray[np.bool_]] = {}
    c_ranges, c_pages = chosen[:n_ranges], chosen[n_ranges:]
    o_ranges, o_pages = owner[:n_ranges], owner[n_ranges:]
    for k, p in enumerate(pids):
        mask = c_ranges[o_ranges == k]
        t = tables[p]
        t.hot = mask
        t.hot_page_addr = res[k].addr[c_pages[o_pages == k]]
        t._resolved = None  # its ``hot`` flags changed
        hot[p] = mask
    mass = np.concatenate([tables[p].mass for p in pids])
    rsize = np.concatenate([tables[p].size_bytes for p in pids])
    coverage = tables[pids[0]].params.demand_coverage
    return Selection(
        hot, int(size[chosen].sum()), coverage_bytes(mass, rsize, coverage)
    )


def _resolved_bytes(t: RangeTable, r: Resolved) -> npt.NDArray[np.float64]:
    """Bytes of resolved pages in each range of ``t``."""
    if r.addr.shape[0] == 0 or len(t) == 0:
        return np.zeros(len(t))
    j = t.locate(r.addr)
    return np.bincount(j[j >= 0], minlength=len(t)).astype(np.float64) * PAGE_SIZE


def coverage_bytes(
    mass: npt.NDArray[np.float64], size: npt.NDArray[np.float64], coverage: float
) -> int:
    """The least memory that serves ``coverage`` of the sampled accesses: ranges
    by decreasing density until their samples reach that fraction (the last one
    in proportion). Independent of what the fast tier holds now."""
    total = float(mass.sum())
    if total <= 0.0:
        return 0
    order = np.argsort(-(mass / np.maximum(size, 1.0)), kind="stable")
    m, sz = mass[order], size[order]
    cum = np.cumsum(m)
    goal = coverage * total
    k = int(np.searchsorted(cum, goal))  # ranges before k serve less than goal
    k = min(k, m.shape[0] - 1)
    before = float(cum[k - 1]) if k > 0 else 0.0
    part = (goal - before) / float(m[k]) if m[k] > 0 else 0.0
    return int(float(sz[:k].sum()) + min(max(part, 0.0), 1.0) * float(sz[k]))
