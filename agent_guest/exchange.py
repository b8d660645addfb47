"""Symmetric page exchange between the fast and slow tier via the backend's
move_pages(2): cold pages out of the fast node and hot pages in, in equal batches,
rate-limited in MiB/s on the injected clock, with per-errno rules for failures.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent_guest.backend import PAGE_SIZE, GuestBackend
from agent_guest.classify import RangeTable, in_sorted
from agent_guest.config import MoverConfig
from agent_guest.errors import AccessDenied, NoSuchProcess
from hypertier_common.clock import Clock

__all__ = [
    "Batch",
    "Candidates",
    "ExchangeStats",
    "Exchanger",
    "RateLimiter",
    "clearly_denser",
    "errno_name",
    "pages_of_ranges",
    "plan_exchange",
]

log = logging.getLogger(__name__)

# Errno rules for per-page move_pages statuses.
RETRY = frozenset({errno.EBUSY, errno.ENOMEM, errno.EAGAIN})
DROP = frozenset({errno.EFAULT, errno.ENOENT, errno.EACCES, errno.EPERM})


def errno_name(code: int) -> str:
    """``EBUSY`` for 16 or -16; ``E123`` for unknown codes."""
    return errno.errorcode.get(abs(code), f"E{abs(code)}")


class RateLimiter:
    """Token bucket in bytes/s on an injected clock; never sleeps.

    ``take(n)`` grants up to ``n`` bytes from what has accrued (at most
    ``burst_s`` seconds' worth), so the mover moves at most the configured rate
    averaged over any window longer than ``burst_s``.
    """

    def __init__(self, rate_mib_s: float, clock: Clock, burst_s: float = 1.0) -> None:
        self._rate = rate_mib_s * (1 << 20)
        self._cap = self._rate * burst_s
        self._clock = clock
        self._tokens = self._cap
        self._last = clock.monotonic()

    def available(self) -> int:
        now = self._clock.monotonic()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return int(self._tokens)

    def take(self, want_bytes: int) -> int:
        granted = max(0, min(want_bytes, self.available()))
        self._tokens -= granted
        return granted

    def refund(self, unused_bytes: int) -> None:
        self._tokens = min(self._cap, self._tokens + max(0, unused_bytes))


@dataclass(frozen=True, eq=False)
class Candidates:
    """Pages in priority order: parallel ``pid``, ``addr``, and the ``density`` and
    its standard error ``noise`` of the range each page is in."""

    pid: npt.NDArray[np.int32]
    addr: npt.NDArray[np.uint64]
    density: npt.NDArray[np.float64]
    noise: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.addr.shape[0])

    @classmethod
    def empty(cls) -> Candidates:
        return cls(
            np.empty(0, np.int32), np.empty(0, np.uint64), np.empty(0), np.empty(0)
        )

    def take(self, start: int, stop: int) -> Candidates:
        return self.pick(slice(start, stop))

    def pick(
        self, sel: slice | npt.NDArray[np.intp] | npt.NDArray[np.bool_]
    ) -> Candidates:
        return Candidates(
            self.pid[sel], self.addr[sel], self.density[sel], self.noise[sel]
        )

    def then(self, other: Candidates) -> Candidates:
        """These candidates followed by ``other``."""
        return Candidates(
            np.concatenate((self.pid, other.pid)),
            np.concatenate((self.addr, other.addr)),
            np.concatenate((self.density, other.density)),
            np.concatenate((self.noise, other.noise)),
        )


@dataclass(frozen=True, eq=False)
class Batch:
    """One move_pages round: ``to`` is "slow" (demote) or "fast" (promote)."""

    to: str
    pages: Candidates


def plan_exchange(
    promote: Candidates,
    demote: Candidates,
    free_pages: int,
    budget_pages: int,
    batch_pages: int,
    min_gain: float = 0.0,
    z: float = 2.0,
) -> list[Batch]:
    """Plan the epoch's batches (pure).

    ``free_pages`` is room left on the fast tier under its limit; negative means
    the tier is over its allotment by that much, which is demoted first. Then
    promotions use the free room, then go in pairs: a demote batch of k cold fast
    pages followed by a promote batch of k hot slow pages, so the fast node never
    holds more than its limit. Every moved page costs one page of ``budget_pages``.
    A pair is only worth it if the hot page is denser than the cold page by the
    factor ``1 + min_gain``, beyond sampling noise (:func:`clearly_denser`;
    hysteresis: near-equals and noise never swap).
    """
    batches: list[Batch] = []
    budget = max(0, budget_pages)
    d = p = 0
    if free_pages < 0:
        n = min(-free_pages, len(demote), budget)
        for s in range(0, n, batch_pages):
            batches.append(Batch("slow", demote.take(s, min(n, s + batch_pages))))
        d, budget = n, budget - n
        free_pages = 0
    n = min(free_pages, len(promote), budget)
    for s in range(0, n, batch_pages):
        batches.append(Batch("fast", promote.take(s, min(n, s + batch_pages))))
    p, budget = n, budget - n
    pairs = min(len(promote) - p, len(demote) - d, budget // 2)
    if pairs > 0:
        hot, cold = promote.take(p, p + pairs), demote.take(d, d + pairs)
        gain = clearly_denser(hot, cold, min_gain, z)
        if not gain.all():
            pairs = int(np.argmin(gain))
    for s in range(0, pairs, batch_pages):
        k = min(batch_pages, pairs - s)
        batches.append(Batch("slow", demote.take(d + s, d + s + k)))
        batches.append(Batch("fast", promote.take(p + s, p + s + k)))
    return batches


def _counts(c: Candidates) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(samples, density per sample) behind each candidate's estimate.

    A unit (range or page) with ``n`` samples has ``density = n * s`` and
    ``noise = sqrt(n + 1) * s``, so ``s`` and ``n`` follow from the two."""
    d = np.maximum(c.density, 0.0)
    u = np.square(c.noise)
    s = (np.sqrt(d * d + 4.0 * u) - d) / 2.0
    s = np.maximum(s, 1e-300)
    return d / s, s


def clearly_denser(
    hot: Candidates, cold: Candidates, min_gain: float, z: float
) -> npt.NDArray[np.bool_]:
    """Per pair: is the hot unit denser than ``(1 + min_gain)`` x the cold one's
    plausible density, beyond Poisson noise?

    The cold side counts at its upper bound (``z`` standard errors); the hot
    side's sample count is tested against the count that bound predicts, with
    Anscombe's variance-stabilising transform (``2 sqrt(n + 3/8)`` is close to
    unit-variance normal even for a handful of samples, where ``n +- sqrt(n)``
    is not: 4 samples against ~0 expected are strong evidence).
    """
    n_hot, s_hot = _counts(hot)
    n_cold, s_cold = _counts(cold)
    bound = s_cold * (n_cold + z * np.sqrt(n_cold + 1.0)) * (1.0 + min_gain)
    expect = bound / s_hot  # in the hot unit's samples
    stat = 2.0 * (np.sqrt(n_hot + 0.375) - np.sqrt(expect + 0.375))
    ok: npt.NDArray[np.bool_] = (stat > z) & (
        hot.density > (1.0 + min_gain) * cold.density
    )
    return ok


def pages_of_ranges(
    start: npt.NDArray[np.uint64], end: npt.NDArray[np.uint64], limit: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.intp]]:
    """Page addresses of the ranges in the given order, at most ``limit`` of them,
    and the index of the range each came from (vectorised)."""
    pages = ((end - start) // np.uint64(PAGE_SIZE)).astype(np.int64)
    csum = np.cumsum(pages)
    n_ranges = min(int(np.searchsorted(csum, limit, "left")) + 1, int(csum.shape[0]))
    pages = pages[:n_ranges].copy()
    if pages.shape[0] and csum[n_ranges - 1] > limit:
        pages[-1] -= csum[n_ranges - 1] - limit
    total = int(pages.sum())
    idx = np.repeat(np.arange(pages.shape[0]), pages)
    first = np.cumsum(pages) - pages
    k = np.arange(total, dtype=np.int64) - np.repeat(first, pages)
    addr = start[idx] + (k * PAGE_SIZE).astype(np.uint64)
    return addr, idx


@dataclass
class ExchangeStats:
    """Cumulative counters of the mover."""

    promoted: int = 0
    demoted: int = 0
    scanned: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    dropped_pids: int = 0


@dataclass
class _Busy:
    addr: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    tries: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))


class Exchanger:
    """Finds candidate pages with ``page_nodes`` and exchanges them in batches."""

    def __init__(
        self,
        backend: GuestBackend,
        cfg: MoverConfig,
        clock: Clock,
        stop: threading.Event | None = None,
    ) -> None:
        self._backend = backend
        self._cfg = cfg
        self._limiter = RateLimiter(cfg.max_bandwidth_mib_s, clock)
        self._stop = stop or threading.Event()
        self._busy: dict[int, _Busy] = {}
        # Pages moved in the last ``cooldown_epochs`` epochs, per pid: they may not
        # move again until then (no ping-pong, whatever the sample source says).
        self._recent: dict[
            int, tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]
        ] = {}
        self._epoch = 0
        self.stats = ExchangeStats()
        self.gone: set[int] = set()
        self.denied: set[int] = set()

    def _find(
        self,
        tables: Mapping[int, RangeTable],
        want_hot: bool,
        on_nodes: Sequence[int],
        limit: int,
        cooldown: bool = True,
    ) -> Candidates:
        """Candidate pages that are on ``on_nodes`` now; at most ``limit`` pages are
        examined. Promotion (``want_hot``): resolved pages selected hot, and the
        other pages of hot ranges, densest first. Demotion: resolved pages not
        selected and the other pages of cold ranges, then of hot ranges, least
        dense first; never a resolved page selected hot."""
        pids: list[npt.NDArray[np.int64]] = []
        idx: list[npt.NDArray[np.intp]] = []
        dens: list[npt.NDArray[np.float64]] = []
        noise: list[npt.NDArray[np.float64]] = []
        hotflag: list[npt.NDArray[np.bool_]] = []
        for pid, t in tables.items():
            sel = np.flatnonzero(t.hot) if want_hot else np.arange(len(t))
            res = t.residual()
            d, sd = (res.hot, res.hot_sd) if want_hot else (res.cold, res.cold_sd)
            pids.append(np.full(sel.shape[0], pid, np.int64))
            idx.append(sel)
            dens.append(d[sel])
            noise.append(sd[sel])
            hotflag.append(t.hot[sel])
        out = self._resolved_pages(tables, on_nodes, want_hot, cooldown)
        if not pids:
            return out
        all_pid = np.concatenate(pids)
        all_idx = np.concatenate(idx)
        d = np.concatenate(dens)
        sd = np.concatenate(noise)
        if want_hot:
            order = np.argsort(-d, kind="stable")
        else:
            order = np.lexsort((d, np.concatenate(hotflag)))
        budget = limit - len(out)
        # Group consecutive ranges of one pid so page_nodes runs once per pid.
        for pid in dict.fromkeys(all_pid[order].tolist()):
            if budget <= 0:
                break
            if pid in self.gone:
                continue
            sel = order[all_pid[order] == pid]
            t = tables[pid]
            ri = all_idx[sel]
            addr, which = pages_of_ranges(t.start[ri], t.end[ri], budget)
            if addr.shape[0] == 0:
                continue
            budget -= int(addr.shape[0])
            nodes = self._nodes(pid, addr)
            if nodes is None:
                continue
            keep = self._eligible(pid, addr, nodes, on_nodes, cooldown)
            # resolved pages are candidates on their own density (above)
            keep &= ~in_sorted(addr, t.resolved().addr)
            out = out.then(
                Candidates(
                    np.full(int(keep.sum()), pid, np.int32),
                    addr[keep],
                    d[sel][which][keep],
                    sd[sel][which][keep],
                )
            )
        # Pages of several pids (and resolved pages): one global density order.
        key = -out.density if want_hot else out.density
        order = np.argsort(key, kind="stable")
        return out.pick(order)

    def _eligible(
        self,
        pid: int,
        addr: npt.NDArray[np.uint64],
        nodes: npt.NDArray[np.int32],
        on_nodes: Sequence[int],
        cooldown: bool,
    ) -> npt.NDArray[np.bool_]:
        """On ``on_nodes``, not given up on (EBUSY), not moved recently."""
        keep = np.isin(nodes, np.asarray(on_nodes, np.int32))
        keep &= ~self._banned(pid, addr)
        recent = self._recent.get(pid) if cooldown else None
        if recent is not None:
            keep &= ~in_sorted(addr, recent[0])
        return keep

    def _nodes(
        self, pid: int, addr: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.int32] | None:
        self.stats.scanned += int(addr.shape[0])
        try:
            return self._backend.page_nodes(pid, addr)
        except NoSuchProcess:
            self._drop(pid)
        except AccessDenied as err:
            self._deny(pid, err)
        return None

    def _resolved_pages(
        self,
        tables: Mapping[int, RangeTable],
        on_nodes: Sequence[int],
        want_hot: bool,
        cooldown: bool,
    ) -> Candidates:
        """Resolved pages on ``on_nodes``: those selected hot (promotion) or the
        others (demotion), each with its own density."""
        out = Candidates.empty()
        for pid, t in tables.items():
            if pid in self.gone:
                continue
            r = t.resolved()
            pick = r.hot if want_hot else ~r.hot
            addr = r.addr[pick]
            if addr.shape[0] == 0:
                continue
            nodes = self._nodes(pid, addr)
            if nodes is None:
                continue
            keep = self._eligible(pid, addr, nodes, on_nodes, cooldown)
            out = out.then(
                Candidates(
                    np.full(int(keep.sum()), pid, np.int32),
                    addr[keep],
                    r.density[pick][keep],
                    r.noise[pick][keep],
                )
            )
        return out

    def _banned(self, pid: int, addr: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        b = self._busy.get(pid)
        if b is None or b.addr.shape[0] == 0:
            return np.zeros(addr.shape[0], bool)
        over = b.addr[b.tries > self._cfg.max_busy_retries]
        return np.isin(addr, over)

    def _note_busy(self, pid: int, addr: npt.NDArray[np.uint64]) -> None:
        b = self._busy.setdefault(pid, _Busy())
        allv = np.concatenate((b.addr, addr))
        tries = np.concatenate((b.tries, np.ones(addr.shape[0], np.int64)))
        uniq, inv = np.unique(allv, return_inverse=True)
        b.addr = uniq
        b.tries = np.bincount(inv, weights=tries).astype(np.int64)

    def _note_moved(self, pid: int, addr: npt.NDArray[np.uint64]) -> None:
        if self._cfg.cooldown_epochs == 0 or addr.shape[0] == 0:
            return
        old_a, old_e = self._recent.get(
            pid, (np.empty(0, np.uint64), np.empty(0, np.int64))
        )
        a = np.concatenate((old_a, addr))
        e = np.concatenate((old_e, np.full(addr.shape[0], self._epoch, np.int64)))
        order = np.argsort(a, kind="stable")  # sorted, for in_sorted
        self._recent[pid] = (a[order], e[order])

    def _expire_recent(self) -> None:
        horizon = self._epoch - self._cfg.cooldown_epochs
        for pid, (a, e) in list(self._recent.items()):
            keep = e > horizon
            if not keep.any():
                del self._recent[pid]
            elif not keep.all():
                self._recent[pid] = (a[keep], e[keep])

    def _deny(self, pid: int, err: AccessDenied) -> None:
        log.warning("pid %d: %s; no longer managing it", pid, err)
        self.denied.add(pid)
        self.gone.add(pid)
        self.stats.failures["EPERM"] += 1

    def _drop(self, pid: int) -> None:
        if pid not in self.gone:
            log.info("pid %d exited; dropping it", pid)
            self.gone.add(pid)
            self.stats.dropped_pids += 1
            self._busy.pop(pid, None)
            self._recent.pop(pid, None)

    def run(
        self,
        tables: Mapping[int, RangeTable],
        fast_nodes: Sequence[int],
        slow_nodes: Sequence[int],
        fast_node: int,
        slow_node: int,
        free_pages: int,
    ) -> tuple[int, int]:
        """One epoch of exchange; returns (promoted, demoted) this epoch.

        ``free_pages`` is the fast tier's room under its limit (negative: over it).
        """
        self.gone.clear()
        self._epoch += 1
        self._expire_recent()
        budget = self._limiter.take(self._limiter.available()) // PAGE_SIZE
        if budget == 0:
            return 0, 0
        scan = self._cfg.scan_pages
        promote = Candidates.empty()
        if free_pages > -budget:
            promote = self._find(tables, True, slow_nodes, scan)
        need_demote = max(0, -free_pages) + max(0, len(promote) - max(0, free_pages))
        demote = Candidates.empty()
        if need_demote:
            # Over the allotment, demotion is not optional: no cool-down.
            must = free_pages < 0
            demote = self._find(tables, False, fast_nodes, scan, cooldown=not must)
        batches = plan_exchange(
            promote,
            demote,
            free_pages,
            budget,
            self._cfg.batch_pages,
            self._cfg.min_gain,
        )
        promoted = demoted = 0
        room = free_pages
        for batch in batches:
            if self._stop.is_set():
                break
            if batch.to == "fast":
                # Never overflow: cap each promote batch at the room actually made.
                n = min(len(batch.pages), max(0, room))
                moved = self._move(batch.pages.take(0, n), fast_node)
                promoted += moved
                room -= moved
            else:
                moved = self._move(batch.pages, slow_node)
                demoted += moved
                room += moved
        self._limiter.refund((budget - promoted - demoted) * PAGE_SIZE)
        self.stats.promoted += promoted
        self.stats.demoted += demoted
        return promoted, demoted

    def _move(self, pages: Candidates, node: int) -> int:
        moved = 0
        for pid in np.unique(pages.pid).tolist():
            if pid in self.gone:
                continue
            addr = pages.addr[pages.pid == pid]
            try:
                res = self._backend.move_pages(pid, addr, node)
            except NoSuchProcess:
                self._drop(pid)
                continue
            except AccessDenied as err:
                self._deny(pid, err)
                continue
            moved += res.moved
            self._note_moved(pid, addr[res.status == node])
            bad = res.status < 0
            if bad.any():
                codes, counts = np.unique(-res.status[bad], return_counts=True)
                for c, k in zip(codes.tolist(), counts.tolist(), strict=True):
                    self.stats.failures[errno_name(c)] += k
                busy = res.status == -errno.EBUSY
                if busy.any():
                    self._note_busy(pid, addr[busy])
        return moved
