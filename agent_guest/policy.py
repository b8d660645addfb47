"""The guest's per-epoch decisions that need no I/O: the fast-tier budget, when
to keep the mover's reserve, and the sampling rate to aim at.

How much fast memory the agent may fill and how much of it the managed
processes' hot set may take, from the fast nodes' sizes, the host's allotment
and the mover's reserve (docs/guest.md, "Fast-tier budget"); whether the managed
processes are growing (the reserve is kept only then); and the sampling rate:
boosted after rounds that promote, lowered once placement has settled
(docs/guest.md, "Sampling rate"), and what a sample is worth to the mover.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent_guest.backend import PAGE_SIZE, NumaNode
from agent_guest.config import MoverConfig, SamplerConfig

log = logging.getLogger(__name__)

__all__ = [
    "AccessRate",
    "FastBudget",
    "FastLimit",
    "FastResidency",
    "GrowthWatch",
    "SampleBoost",
    "fast_budget",
]


@dataclass(frozen=True)
class FastBudget:
    """One epoch's fast-tier budget, in bytes.

    ``limit_bytes``: fast memory the agent may fill (the fast nodes' size, or
    the host's allotment if smaller, less the mover's reserve once it is kept);
    ``used_bytes``: in use on the fast nodes now; ``unmanaged_bytes``: the part
    of it the managed processes do not hold; ``kernel_bytes``: free memory the
    kernel keeps on them (``NumaNode.reserved_bytes``: a migration into it
    fails); ``reclaim_bytes``: the part of the used memory the kernel reclaims
    for a promotion (page cache, with ``mover.reclaim_file_pages``);
    ``room_bytes``: what the managed processes' hot set may take (the limit
    less the unmanaged memory it cannot reclaim and the kernel's reserve).
    """

    limit_bytes: int
    used_bytes: int
    unmanaged_bytes: int
    room_bytes: int
    kernel_bytes: int = 0
    reclaim_bytes: int = 0

    @property
    def free_pages(self) -> int:
        """Pages the exchange may add to the fast nodes; negative: pages it must
        take off them, as they hold more than the limit.

        The kernel's reserve and the reclaimable cache change only the room
        for promotions: free memory below the reserve (page cache grew into
        it) or a cache that promotions reclaimed is no reason to demote.
        """
        if self.used_bytes > self.limit_bytes:
            return -((self.used_bytes - self.limit_bytes) // PAGE_SIZE)
        taken = self.used_bytes - self.reclaim_bytes + self.kernel_bytes
        return max(0, (self.limit_bytes - taken) // PAGE_SIZE)


@dataclass
class FastLimit:
    """How much the fast nodes will hold once the host's allotment is reached.

    The host allots the fast tier's virtio-mem device. The fast nodes also hold
    memory beside it (boot memory, less what firmware and the kernel took before
    the node's memory was counted), which only the guest sees, so the limit is
    that fixed part plus the allotment. The fixed part is the nodes' total less
    the device's plugged size, learned while nothing is in flight (the host's
    last plugged size, read after its last allotment, equals that allotment,
    the total did not change since the last call and is at least the plugged
    size) and kept while the device (un)plugs: then the limit is
    already the size the nodes will have, and the agent demotes before an
    unplug rather than after.

    Without a plugged size from the host (a host agent that does not send it),
    the allotment alone is the limit, as the fast nodes' total was before.
    """

    fixed_bytes: int | None = None
    _last_total: int | None = None

    def limit(
        self,
        total: int,
        allot: int | None,
        plugged: int | None,
        plugged_is_newer: bool = True,
    ) -> int:
        """The limit for fast nodes of ``total`` bytes now, the host's last
        allotment ``allot`` and plugged size ``plugged`` (None: not received),
        ``plugged_is_newer`` if the host read that size after it sent ``allot``
        (an older one may be from before a resize that has happened since)."""
        steady = total == self._last_total
        self._last_total = total
        if allot is None:
            return total
        # A node smaller than the device's plugged size is still onlining it.
        if (
            plugged is not None
            and plugged == allot
            and plugged_is_newer
            and steady
            and total >= plugged
        ):
            if total - plugged != self.fixed_bytes:
                log.info(
                    "fast nodes hold %d MiB beside the device (%d MiB plugged)",
                    (total - plugged) >> 20,
                    plugged >> 20,
                )
            self.fixed_bytes = total - plugged
        if self.fixed_bytes is not None:
            return min(total, self.fixed_bytes + allot)
        if plugged is not None:  # in flight since the agent started
            return max(0, min(total, total - plugged + allot))
        return min(total, allot)


# The CPU share (of one CPU) that measuring FastResidency may take.
RESIDENCY_CPU_SHARE = 0.0002
# How far the resident sets may leave the targets' fast memory open
# (FastResidency.is_open) before it is worth measuring.
RESIDENCY_OPEN_BYTES = 4 << 20


@dataclass
class FastResidency:
    """The managed processes' memory on the fast nodes, for :func:`fast_budget`.

    Their resident set over-counts it wherever they hold pages on a slow node
    (demoted, allocated there while the fast node was full, or moved there by
    an unplug): the budget would then take other memory on the fast nodes for
    theirs, give the hot set room the nodes do not have, and find nothing to
    demote once over the limit. The figure per node costs a walk of the
    processes' page tables (``GuestBackend.node_bytes``: /proc/pid/numa_maps,
    ~50 ns a page, 0.4 s for 32 GiB), so it is measured every
    ``min_interval_s`` seconds or more rarely, keeping its CPU under
    ``cpu_share`` of one CPU; sooner when the kernel moved pages (still within
    that share), regardless of it when the targets changed or an unplug ended
    (it may have migrated their pages to another node; the host rate-limits
    resizes); the daemon measures only as it reads the processes' RSS. In
    between it is carried by the mover's own moves, and growth counts as fast
    memory (first touch).
    """

    min_interval_s: float
    cpu_share: float = RESIDENCY_CPU_SHARE
    _fast: int | None = None  # at the last measurement, plus moves since
    _rss: int = 0  # the processes' resident set then
    _next: float = -math.inf
    _steady_unmanaged: int | None = None  # the last while no unplug was in flight
    _last: float = -math.inf  # when it was last measured
    _cost: float = 0.0  # and the CPU seconds that took

    def budget(
        self,
        fast_nodes: Sequence[NumaNode],
        limit_bytes: int,
        rss_bytes: int,
        mover: MoverConfig,
        keep_reserve: bool,
        unplugging: bool,
        is_open: bool = True,
    ) -> FastBudget:
        """:func:`fast_budget` for processes now ``rss_bytes`` resident. With
        ``unplugging`` (the fast nodes' fixed part is known) and the nodes
        still larger than the limit, an unplug is in flight: the kernel counts
        the free pages of the blocks it offlines as used, so the memory the
        processes do not hold is taken as at most what it was before (and
        the rest as free). ``is_open``: see :meth:`fast_bytes`."""
        shrinking = unplugging and limit_bytes < sum(n.total_bytes for n in fast_nodes)
        out = fast_budget(
            fast_nodes,
            limit_bytes,
            self.fast_bytes(rss_bytes, is_open),
            mover,
            keep_reserve,
            self._steady_unmanaged if shrinking else None,
        )
        if not shrinking:
            self._steady_unmanaged = out.unmanaged_bytes
        return out

    def due(self, now: float) -> bool:
        return now >= self._next

    def invalidate(self, at_once: bool = False) -> None:
        """Measure again as soon as the CPU share allows, or ``at_once``."""
        soon = -math.inf if at_once else self._last + self._cost / self.cpu_share
        self._next = min(self._next, soon)

    def measured(
        self, fast_bytes: int, rss_bytes: int, cost_s: float, now: float
    ) -> None:
        """``fast_bytes`` of the processes' ``rss_bytes`` are on the fast nodes
        (measured at ``now`` for ``cost_s`` CPU seconds)."""
        log.debug(
            "targets hold %d of %d MiB on the fast nodes (%.1f ms to read)",
            fast_bytes >> 20,
            rss_bytes >> 20,
            cost_s * 1e3,
        )
        self._fast, self._rss = fast_bytes, rss_bytes
        self._last, self._cost = now, cost_s
        self._next = now + max(self.min_interval_s, cost_s / self.cpu_share)

    def moved(self, promoted_pages: int, demoted_pages: int) -> None:
        if self._fast is not None:
            self._fast += (promoted_pages - demoted_pages) * PAGE_SIZE

    @staticmethod
    def is_open(rss_bytes: int, used_fast: int, used_all: int) -> bool:
        """Do the resident sets leave the processes' fast memory open? What the
        fast nodes hold that is not theirs lies between ``used_fast - rss``
        and ``used_all - rss`` (``used_all``: every node's use); only a span
        over RESIDENCY_OPEN_BYTES is worth measuring (one process alone on
        its nodes needs no measurement)."""
        span = max(0, used_all - rss_bytes) - max(0, used_fast - rss_bytes)
        return span > RESIDENCY_OPEN_BYTES

    def fast_bytes(self, rss_bytes: int, is_open: bool = True) -> int:
        """The estimate for processes now ``rss_bytes`` resident: all of it
        before the first measurement or where that is not open."""
        if self._fast is None or not is_open:
            return rss_bytes
        grown = max(0, rss_bytes - self._rss)
        return max(0, min(rss_bytes, self._fast + grown))


def fast_budget(
    fast_nodes: Sequence[NumaNode],
    limit_bytes: int,
    managed_fast_bytes: int,
    mover: MoverConfig,
    keep_reserve: bool,
    unmanaged_cap: int | None = None,
) -> FastBudget:
    """The budget of the fast nodes ``fast_nodes``.

    ``limit_bytes`` is what they may hold (:class:`FastLimit`);
    ``managed_fast_bytes`` the managed processes' memory on them
    (:class:`FastResidency`). The reserve
    (``mover.reserve_bytes``) is kept only with ``keep_reserve``: the daemon
    keeps it while the managed processes grow (:class:`GrowthWatch`) and once a
    full history window of samples is in (before that the coldest pages are not
    known, and demotions to make room would be blind). ``unmanaged_cap``: at
    most this much of the used memory is taken as not the processes', and
    the rest of it as not used: while an unplug is in flight the free pages of
    the blocks being offlined read as used, and would empty the room and have
    the mover demote for nothing.
    """
    used = sum(n.used_bytes for n in fast_nodes)
    kernel = sum(n.reserved_bytes for n in fast_nodes)
    limit = limit_bytes
    if keep_reserve:
        limit = max(0, limit - mover.reserve_bytes(limit))
    unmanaged = max(0, used - managed_fast_bytes)
    if unmanaged_cap is not None and unmanaged > unmanaged_cap:
        used -= unmanaged - unmanaged_cap
        unmanaged = unmanaged_cap
    reclaim = 0
    if mover.reclaim_file_pages:
        reclaim = min(unmanaged, sum(n.reclaimable_bytes for n in fast_nodes))
    room = min(limit, max(0, limit - unmanaged + reclaim - kernel))
    return FastBudget(limit, used, unmanaged, room, kernel, reclaim)


@dataclass
class GrowthWatch:
    """Whether the managed processes are growing, for the fast reserve.

    The reserve is free fast memory for the pages a growing process touches
    first (data being loaded, a heap that grows). Once the processes stop
    growing it holds nothing, and keeping it empty costs hits wherever the hot
    set fills the fast tier: first touch put the hot set there, and building
    the reserve demotes part of it. Growth is an RSS increase of more than
    1/200 among the processes seen at both of two successive :meth:`note`
    calls (a process seen for the first time is not growing yet); it counts
    for ``hold_s`` seconds.
    """

    hold_s: float
    _last: dict[int, int] = field(default_factory=dict)
    _until: float = -math.inf

    def note(self, rss_bytes: Mapping[int, int], now: float) -> None:
        """Record the processes' RSS (pid -> bytes) at time ``now``."""
        before = after = 0
        for pid, rss in rss_bytes.items():
            if pid in self._last:
                before += self._last[pid]
                after += rss
        if after - before > before // 200:
            self._until = now + self.hold_s
        self._last = dict(rss_bytes)

    def growing(self, now: float) -> bool:
        """Did the processes grow within ``hold_s`` before ``now``?"""
        return now < self._until


# The settled state's change test (SampleBoost._changed): standard errors, and
# the samples the recent window needs before it says anything.
SETTLE_Z = 3.0
SETTLE_MIN_SAMPLES = 8.0


@dataclass
class SampleBoost:
    """The sampling rate to aim at after each epoch's exchange round.

    Three rates. ``sampler.boost_rate_hz`` for ``sampler.boost_epochs`` epochs
    after a round that promoted pages: placement still has something to learn
    (a hot set larger than what is resolved yet, a phase change), and more
    samples resolve it sooner. ``sampler.settled_rate_hz`` (at most
    ``sampler.rate_hz``) once ``sampler.settle_epochs`` rounds in a row moved
    nothing, left no promotion candidate waiting on more samples and the
    sampled distribution held: placement has settled, and
    samples only need to notice change; each one costs the workload time (a
    PEBS assist) and buys nothing.
    Otherwise ``sampler.rate_hz``. A round that moves pages ends the settled
    state at once; an epoch whose samples fall on the hot ranges clearly less
    often than before (:meth:`_changed`) ends it with a boost, as the hot set
    has moved and is learnt sooner with more samples. The CPU budget caps
    every rate (``sampler.RateControl``).
    """

    cfg: SamplerConfig
    # Does a sample stand for a fixed share of the accesses (PEBS, IBS)? Only
    # then may the rate settle: the change test reads the samples as a draw of
    # the accesses, and fewer samples save the workload its PEBS assists. Fault
    # and soft-dirty samples are events that happen whatever the rate (a page's
    # first touch, a hinting or induced fault): fewer of them save only records,
    # and on the Debian 13 guest settling cost the page-fault source a phase
    # change's last hot pages (docs/guest.md, "Sampling rate").
    can_settle: bool = True
    _left: int = 0
    _quiet: int = 0  # rounds in a row that moved nothing
    # CPU (ns) the samples beyond sampler.rate_hz cost since the last round
    # that promoted (or the last change): what the boost has spent on the
    # candidates that wait since then
    _spent_ns: float = 0.0
    # Samples on the hot ranges and in all, decayed over two time scales: the
    # reference (~20 epochs) and the recent window (~4 epochs).
    _ref_hot: float = 0.0
    _ref_all: float = 0.0
    _new_hot: float = 0.0
    _new_all: float = 0.0

    @property
    def settled(self) -> bool:
        """Is placement settled (sampling at ``sampler.settled_rate_hz``)?"""
        k = self.cfg.settle_epochs
        return self.can_settle and k > 0 and self._quiet >= k

    def after_round(
        self,
        promoted: int,
        moved: int | None = None,
        hot_samples: float = 0.0,
        samples: float = 0.0,
        pending: int = 0,
        deferred: int = 0,
        pending_ns: float = 0.0,
    ) -> float:
        """The target rate (samples/s) after a round that promoted ``promoted``
        and moved ``moved`` pages in all (None: ``promoted``), in an epoch
        whose ``samples`` samples fell ``hot_samples`` on ranges selected hot,
        leaving ``pending`` promotion candidates on the slow tier (pages
        selected hot whose gain has not paid for a move yet: more samples
        decide them, so a round with any is not quiet) and ``deferred`` others
        that wait on samples but would not pay even at their estimates
        (:func:`agent_guest.plan.waiting_value`): a round with those only is
        neither quiet nor busy, it leaves the count of quiet rounds as it is
        (a settled sampler stays settled).

        ``pending_ns``: what the pending candidates' moves would save at their
        estimates (ns over the payback horizon, less the moves' cost;
        :func:`agent_guest.plan.waiting_value`). Past its ``boost_epochs`` the
        boost goes on (or starts again) while that exceeds what the samples
        beyond ``sampler.rate_hz`` have cost since the last promoting round
        (:meth:`sampled`): more samples resolve those candidates sooner, and
        the boost never spends more on them than they are worth."""
        moved = promoted if moved is None else moved
        # a fall of the hot share matters only to a settled sampler
        changed = self._changed(hot_samples, samples) and self.settled
        if promoted or changed:
            self._left = self.cfg.boost_epochs
            self._spent_ns = 0.0
        elif self._left:
            self._left -= 1
        busy = moved or changed or pending
        if busy:
            self._quiet = 0
        elif not deferred:
            self._quiet += 1
        worth = pending > 0 and pending_ns > self._spent_ns
        if self.cfg.boost_rate_hz > 0 and (self._left > 0 or worth):
            return float(self.cfg.boost_rate_hz)
        if self.settled:
            return float(min(self.cfg.settled_rate_hz, self.cfg.rate_hz))
        return float(self.cfg.rate_hz)

    def sampled(self, samples: int, cpu_s: float, wall_s: float) -> None:
        """A window of ``wall_s`` seconds generated ``samples`` for ``cpu_s``
        of the agent's CPU: count the share of that CPU the samples beyond
        ``sampler.rate_hz`` took (the measured CPU per sample) as spent."""
        extra = samples - self.cfg.rate_hz * wall_s
        if extra > 0 and cpu_s > 0:
            self._spent_ns += extra * cpu_s / samples * 1e9

    def _changed(self, hot: float, n: float) -> bool:
        """Fold in an epoch's samples; did the hot ranges' share of them fall?

        The recent share is tested against the reference share with the
        normal approximation of the binomial, ``SETTLE_Z`` standard errors
        (and at least one sample) below it, once the recent window holds
        ``SETTLE_MIN_SAMPLES``. A fall means the hot set moved off the
        ranges the placement was made for (a phase change). The recent
        window restarts after a detected change, so one change is reported
        once.
        """
        self._new_hot = self._new_hot * 0.75 + hot
        self._new_all = self._new_all * 0.75 + n
        changed = False
        if self._new_all >= SETTLE_MIN_SAMPLES and self._ref_all > 0:
            p = min(1.0, self._ref_hot / self._ref_all)
            expect = self._new_all * p
            sd = math.sqrt(self._new_all * p * (1.0 - p))
            changed = self._new_hot < expect - max(1.0, SETTLE_Z * sd)
        self._ref_hot = self._ref_hot * 0.95 + hot
        self._ref_all = self._ref_all * 0.95 + n
        if changed:
            self._new_hot = self._new_all = 0.0
        return changed


@dataclass
class AccessRate:
    """The access rate the samples stand for, smoothed over epochs (by
    ``smoothing`` an epoch): each sample counts the period it was taken at.

    The mover values a sample moved from the slow tier to the fast one by the
    accesses per second it stands for (``mover.payback_s``). While the period
    settles (it moves up to 4x a window, most at start), the current period
    times a rate of samples taken at another one misstates that several-fold:
    moves between pages of equal heat then look as if they paid.
    """

    smoothing: float = 0.3
    per_s: float = 0.0

    def note(self, samples: int, period: int, dt_s: float) -> None:
        """``samples`` taken at ``period`` arrived over ``dt_s`` seconds."""
        if dt_s > 0:
            self.per_s += self.smoothing * (samples * period / dt_s - self.per_s)

    def per_count(self, total_count: float) -> float:
        """Accesses per second one unit of ``total_count`` decayed samples
        stands for (0 before any sample)."""
        return self.per_s / total_count if total_count > 0 else 0.0
