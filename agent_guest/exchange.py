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
from agent_guest.classify import RangeTable
from agent_guest.config import MoverConfig
from agent_guest.errors import NoSuchProcess
from agent_guest.nodecache import NodeCache
from agent_guest.pages import in_sorted
from agent_guest.plan import (
    Candidates,
    MoveCost,
    pages_of_ranges,
    plan_exchange,
    waiting_value,
)
from agent_guest.ratelimit import RateLimiter
from hypertier_common.arrays import F64, I32, I64, U64, BoolArray
from hypertier_common.clock import Clock
from hypertier_common.errors import AccessDenied

__all__ = [
    "ExchangeStats",
    "Exchanger",
    "RateLimiter",
    "errno_name",
]

log = logging.getLogger(__name__)

# Errno rules for per-page move_pages statuses.
RETRY = frozenset({errno.EBUSY, errno.ENOMEM, errno.EAGAIN})
# Rounds without -ENOMEM after which Exchanger.short_pages halves.
SHORT_HALVING = 16
DROP = frozenset({errno.EFAULT, errno.ENOENT, errno.EACCES, errno.EPERM})


def errno_name(code: int) -> str:
    """``EBUSY`` for 16 or -16; ``E123`` for unknown codes."""
    return errno.errorcode.get(abs(code), f"E{abs(code)}")


@dataclass
class ExchangeStats:
    """Cumulative counters of the mover."""

    promoted: int = 0
    demoted: int = 0
    scanned: int = 0  # pages whose node the kernel was asked
    scan_cached: int = 0  # pages whose node came from the cache instead
    failures: Counter[str] = field(default_factory=Counter)
    dropped_pids: int = 0


@dataclass
class _Busy:
    addr: U64 = field(default_factory=lambda: np.empty(0, np.uint64))
    tries: I64 = field(default_factory=lambda: np.empty(0, np.int64))


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
        self._recent: dict[int, tuple[U64, I64]] = {}
        self._epoch = 0
        self._where = NodeCache(cfg.placement_ttl_epochs)
        self.stats = ExchangeStats()
        self.gone: set[int] = set()
        self.denied: set[int] = set()
        # promotion candidates the last round left unmoved that more samples
        # could still move (plan.waiting_value): whose moves would pay at their
        # estimates (and their moves' net saving over the payback horizon, ns,
        # at those estimates), and the others
        self.pending = 0
        self.pending_ns = 0.0
        self.deferred = 0
        # Pages of room the budget counts that the fast node does not give:
        # promotions into it failed with -ENOMEM (docs/guest.md, "kernel
        # reserve"); halved every SHORT_HALVING rounds without such a failure.
        self.short_pages = 0
        self._calm = 0

    def _find(
        self,
        tables: Mapping[int, RangeTable],
        want_hot: bool,
        on_nodes: Sequence[int],
        limit: int,
        cooldown: bool = True,
        want: int | None = None,
    ) -> Candidates:
        """Candidate pages that are on ``on_nodes`` now; at most ``limit`` pages are
        examined. Promotion (``want_hot``): resolved pages selected hot, and the
        other pages of hot ranges, densest first. Demotion: resolved pages not
        selected and the other pages of cold ranges, then of hot ranges, least
        dense first; never a resolved page selected hot.

        With ``want``, range pages are examined in chunks, in that order, until
        ``want`` of them are candidates: a round uses no more, and each page
        examined may cost a page-table walk (``page_nodes``) where its node is
        not cached. The resolved pages do not count toward ``want``: they are
        all candidates, and one may be less or more dense than any range page.
        The search stops at a chunk's end, so it may return more.
        """
        pids: list[I64] = []
        idx: list[npt.NDArray[np.intp]] = []
        dens: list[F64] = []
        noise: list[F64] = []
        hotflag: list[BoolArray] = []
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
        chunk = limit if want is None else max(self._cfg.batch_pages, 2 * want)
        found = 0  # range pages that are candidates
        # Group consecutive ranges of one pid so page_nodes runs once per pid.
        for pid in dict.fromkeys(all_pid[order].tolist()):
            if budget <= 0 or (want is not None and found >= want):
                break
            if pid in self.gone:
                continue
            sel = order[all_pid[order] == pid]
            t = tables[pid]
            ri = all_idx[sel]
            addr, which = pages_of_ranges(t.start[ri], t.end[ri], budget)
            resolved = t.resolved().addr
            for lo in range(0, addr.shape[0], chunk):
                part, w = addr[lo : lo + chunk], which[lo : lo + chunk]
                budget -= int(part.shape[0])
                nodes = self._nodes(pid, part)
                if nodes is None:
                    break
                keep = self._eligible(pid, part, nodes, on_nodes, cooldown)
                # resolved pages are candidates on their own density (above)
                keep &= ~in_sorted(part, resolved)
                found += int(keep.sum())
                out = out.then(
                    Candidates(
                        np.full(int(keep.sum()), pid, np.int32),
                        part[keep],
                        d[sel][w][keep],
                        sd[sel][w][keep],
                    )
                )
                if want is not None and found >= want:
                    break
        # Pages of several pids (and resolved pages): one global density order.
        key = -out.density if want_hot else out.density
        order = np.argsort(key, kind="stable")
        return out.pick(order)

    def _eligible(
        self,
        pid: int,
        addr: U64,
        nodes: I32,
        on_nodes: Sequence[int],
        cooldown: bool,
    ) -> BoolArray:
        """On ``on_nodes``, not given up on (EBUSY), not moved recently."""
        keep = np.isin(nodes, np.asarray(on_nodes, np.int32))
        keep &= ~self._banned(pid, addr)
        recent = self._recent.get(pid) if cooldown else None
        if recent is not None:
            keep &= ~in_sorted(addr, recent[0])
        return keep

    def _nodes(self, pid: int, addr: U64) -> I32 | None:
        """The node of each page: from the cache where it is fresh, else asked."""
        node, known = self._where.lookup(pid, addr, self._epoch)
        ask = ~known
        asked = int(ask.sum())
        self.stats.scanned += asked
        self.stats.scan_cached += addr.shape[0] - asked
        if asked == 0:
            return node
        try:
            got = self._backend.page_nodes(pid, addr[ask])
        except NoSuchProcess:
            self._drop(pid)
            return None
        except AccessDenied as err:
            self._deny(pid, err)
            return None
        node[ask] = got
        self._where.learn(pid, addr[ask], got, self._epoch)
        return node

    def forget_placement(self) -> None:
        """Ask the kernel again for every page's node: something other than
        this mover may have moved them (an unplug)."""
        self._where.forget()

    def _resolved_pages(
        self,
        tables: Mapping[int, RangeTable],
        on_nodes: Sequence[int],
        want_hot: bool,
        cooldown: bool,
    ) -> Candidates:
        """Resolved pages on ``on_nodes``: those selected hot (promotion) or the
        others (demotion), each with its own density; a promotion candidate's
        ``trust`` is its range's :meth:`RangeTable.dispersion`."""
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
            dens = r.density[pick][keep]
            trust = shrunk = None
            if want_hot:  # how far a page's own count can be believed
                j = t.locate(addr[keep])
                jj = np.maximum(j, 0)
                trust = np.where(j >= 0, t.dispersion()[jj], 0.0)
                # its count shrunk toward its range's mean page by that weight
                # (counts >= hot_page_min_samples > 0: density / count is the
                # density of one sample)
                mean = t.page_mean()[jj] * dens / r.count[pick][keep]
                shrunk = np.where(j >= 0, trust * dens + (1.0 - trust) * mean, dens)
            out = out.then(
                Candidates(
                    np.full(int(keep.sum()), pid, np.int32),
                    addr[keep],
                    dens,
                    r.noise[pick][keep],
                    trust,
                    shrunk,
                )
            )
        return out

    @staticmethod
    def _resolved_mask(tables: Mapping[int, RangeTable], c: Candidates) -> BoolArray:
        """Which of ``c`` are resolved pages (counted one by one)."""
        out = np.zeros(len(c), bool)
        for pid in np.unique(c.pid).tolist():
            t = tables.get(int(pid))
            if t is not None:
                sel = np.flatnonzero(c.pid == pid)
                out[sel] = in_sorted(c.addr[sel], t.resolved().addr)
        return out

    def _banned(self, pid: int, addr: U64) -> BoolArray:
        b = self._busy.get(pid)
        if b is None or b.addr.shape[0] == 0:
            return np.zeros(addr.shape[0], bool)
        over = b.addr[b.tries > self._cfg.max_busy_retries]  # sorted (np.unique)
        return in_sorted(addr, over)

    def _note_busy(self, pid: int, addr: U64) -> None:
        b = self._busy.setdefault(pid, _Busy())
        allv = np.concatenate((b.addr, addr))
        tries = np.concatenate((b.tries, np.ones(addr.shape[0], np.int64)))
        uniq, inv = np.unique(allv, return_inverse=True)
        b.addr = uniq
        b.tries = np.bincount(inv, weights=tries).astype(np.int64)

    def _note_moved(self, pid: int, addr: U64) -> None:
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
            self._where.forget(pid)

    def run(
        self,
        tables: Mapping[int, RangeTable],
        fast_nodes: Sequence[int],
        slow_nodes: Sequence[int],
        fast_node: int,
        slow_node: int,
        free_pages: int,
        cost: MoveCost | None = None,
    ) -> tuple[int, int]:
        """One epoch of exchange; returns (promoted, demoted) this epoch.

        ``free_pages`` is the fast tier's room under its limit (negative: over it);
        ``cost`` what moves cost and gain (None: every worthwhile pair goes).
        """
        self.gone.clear()
        self.pending = self.deferred = 0
        self.pending_ns = 0.0
        self._epoch += 1
        self._expire_recent()
        self._calm += 1
        if self._calm >= SHORT_HALVING:
            self.short_pages //= 2
            self._calm = 0
        if free_pages > 0:  # room only: demotions over the limit stay due
            free_pages = max(0, free_pages - self.short_pages)
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
            demote = self._find(
                tables, False, fast_nodes, scan, cooldown=not must, want=need_demote
            )
        log.debug(
            "exchange: %d pages free under the limit, budget %d, candidates +%d/-%d",
            free_pages,
            budget,
            len(promote),
            len(demote),
        )
        batches = plan_exchange(
            promote,
            demote,
            free_pages,
            budget,
            self._cfg.batch_pages,
            self._cfg.min_gain,
            cost=cost,
            z_own=self._cfg.own_count_z,
        )
        promoted = demoted = 0
        room = free_pages
        for batch in batches:
            if self._stop.is_set():
                break
            if batch.to == "fast":
                # Never overflow: cap each promote batch at the room actually made.
                n = min(len(batch.pages), max(0, room))
                moved, full = self._move(batch.pages.take(0, n), fast_node)
                promoted += moved
                room -= moved
                if full:
                    # The node is full though the budget saw room: what is left
                    # of that room is not there (this round and later ones).
                    self.short_pages += max(0, room)
                    self._calm = 0
                    room = 0
            else:
                moved, _ = self._move(batch.pages, slow_node)
                demoted += moved
                room += moved
        # Pages that would not move (busy, gone) leave the tier over its limit:
        # demote the next candidates in their place, within the budget.
        pos = sum(len(b.pages) for b in batches if b.to == "slow")
        while room < 0 and not self._stop.is_set():
            n = min(-room, len(demote) - pos, self._cfg.batch_pages)
            n = min(n, budget - promoted - demoted)
            if n <= 0:
                break
            moved, _ = self._move(demote.take(pos, pos + n), slow_node)
            pos += n
            demoted += moved
            room += moved
        self._limiter.refund((budget - promoted - demoted) * PAGE_SIZE)
        resolved = self._resolved_mask(tables, promote)
        waits = waiting_value(
            promote, demote, free_pages, promoted, resolved, self._cfg.min_gain,
            z_own=self._cfg.own_count_z, cost=cost, batch_pages=self._cfg.batch_pages,
        )  # fmt: skip
        self.pending, self.pending_ns = waits.paying, waits.value_ns
        self.deferred = waits.waiting - waits.paying
        self.stats.promoted += promoted
        self.stats.demoted += demoted
        return promoted, demoted

    def _move(self, pages: Candidates, node: int) -> tuple[int, int]:
        """Move ``pages`` to ``node``: (pages moved, pages refused -ENOMEM)."""
        moved = full = 0
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
            self._where.learn(pid, addr, res.status, self._epoch)
            bad = res.status < 0
            if bad.any():
                codes, counts = np.unique(-res.status[bad], return_counts=True)
                for c, k in zip(codes.tolist(), counts.tolist(), strict=True):
                    self.stats.failures[errno_name(c)] += k
                busy = res.status == -errno.EBUSY
                if busy.any():
                    self._note_busy(pid, addr[busy])
                full += int(np.count_nonzero(res.status == -errno.ENOMEM))
        return moved, full
