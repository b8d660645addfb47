"""The exchange's plan (pure): candidate pages, which pairs are worth swapping,
and in what batches. :mod:`agent_guest.exchange` finds the candidates and moves
the pages; this module only decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from agent_guest.backend import PAGE_SIZE
from hypertier_common.arrays import F64, I32, U64, BoolArray

__all__ = [
    "Batch",
    "Candidates",
    "MoveCost",
    "Waiting",
    "clearly_denser",
    "pages_of_ranges",
    "paying_prefix",
    "plan_exchange",
    "waiting_value",
]


@dataclass(frozen=True, eq=False)
class Candidates:
    """Pages in priority order: parallel ``pid``, ``addr``, and the ``density`` and
    its standard error ``noise`` of each page's estimate; ``trust`` (None: 0
    for all) how much of that estimate is the page's own count rather than its
    range's (:meth:`agent_guest.classify.RangeTable.dispersion`); ``shrunk``
    (None: ``density``) the estimate with the page's own count shrunk toward
    its range's mean page by that weight: what a page picked for its high
    count is worth on average (its count overstates it; a range's estimate is
    not picked page by page and is its own ``shrunk``)."""

    pid: I32
    addr: U64
    density: F64
    noise: F64
    trust: F64 | None = None
    shrunk: F64 | None = None

    def trusted(self) -> F64:
        """``trust``, zeros where it is None."""
        return np.zeros(len(self)) if self.trust is None else self.trust

    def expected(self) -> F64:
        """``shrunk``, ``density`` where it is None."""
        return self.density if self.shrunk is None else self.shrunk

    def __len__(self) -> int:
        return int(self.addr.shape[0])

    @classmethod
    def empty(cls) -> Candidates:
        return cls(
            np.empty(0, np.int32), np.empty(0, np.uint64), np.empty(0), np.empty(0)
        )

    def take(self, start: int, stop: int) -> Candidates:
        return self.pick(slice(start, stop))

    def pick(self, sel: slice | npt.NDArray[np.intp] | BoolArray) -> Candidates:
        return Candidates(
            self.pid[sel], self.addr[sel], self.density[sel], self.noise[sel],
            None if self.trust is None else self.trust[sel],
            None if self.shrunk is None else self.shrunk[sel],
        )  # fmt: skip

    def then(self, other: Candidates) -> Candidates:
        """These candidates followed by ``other``."""
        return Candidates(
            np.concatenate((self.pid, other.pid)),
            np.concatenate((self.addr, other.addr)),
            np.concatenate((self.density, other.density)),
            np.concatenate((self.noise, other.noise)),
            None
            if self.trust is None and other.trust is None
            else np.concatenate((self.trusted(), other.trusted())),
            None
            if self.shrunk is None and other.shrunk is None
            else np.concatenate((self.expected(), other.expected())),
        )


@dataclass(frozen=True)
class MoveCost:
    """What moving pages costs and what a sample of density moved is worth, in ns.

    ``call_ns`` per move_pages call (the TLB flush of every vCPU the process
    runs on: since Linux 6.4 migrate_pages() flushes once per batch, a full
    flush, and every vCPU then refills its TLB with cold 2D walks), ``page_ns``
    per page (unmap, copy, remap); ``sample_ns`` the time a round saves over
    the payback horizon per sample (decayed count) it moves from the slow tier
    to the fast one. With ``sample_ns`` zero the value of a sample is unknown
    (a source without a sampling period) and every round goes.
    """

    call_ns: float
    page_ns: float
    sample_ns: float


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
    cost: MoveCost | None = None,
    z_own: float | None = None,
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

    Demotions over the limit are due whatever they gain. Of the optional moves
    (promotions into free room, then swaps) only the prefix that pays for itself
    within the payback horizon goes (:func:`paying_prefix`; with ``cost`` None,
    all of them): a move_pages call flushes TLBs whatever it moves, so a round
    of a few pages of little gain costs more than it returns. What does not go
    now stays a candidate and adds to a later epoch's round.
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
    p, budget = n, budget - n
    pairs = min(len(promote) - p, len(demote) - d, budget // 2)
    if pairs > 0:
        hot, cold = promote.take(p, p + pairs), demote.take(d, d + pairs)
        gain = clearly_denser(hot, cold, min_gain, pair_z(hot, z, z_own))
        if not gain.all():
            pairs = int(np.argmin(gain))
    if cost is not None and cost.sample_ns > 0.0 and p + pairs > 0:
        k = paying_prefix(
            promote.take(0, p + pairs), demote.take(d, d + pairs), p,
            batch_pages, cost,
        )  # fmt: skip
        p, pairs = min(k, p), max(0, k - p)
    for s in range(0, p, batch_pages):
        batches.append(Batch("fast", promote.take(s, min(p, s + batch_pages))))
    for s in range(0, pairs, batch_pages):
        k = min(batch_pages, pairs - s)
        batches.append(Batch("slow", demote.take(d + s, d + s + k)))
        batches.append(Batch("fast", promote.take(p + s, p + s + k)))
    return batches


def paying_prefix(
    promote: Candidates,
    demote: Candidates,
    free: int,
    batch_pages: int,
    cost: MoveCost,
) -> int:
    """How many of a round's moves to make: the prefix with the most net value.

    The round is ``free`` promotions into free room (each worth its page's
    density) then swaps of ``promote[free:]`` against ``demote`` pair by pair
    (each worth the difference), both in the order given (best first); each
    estimate counts one standard error toward no gain. A prefix of ``k``
    moves costs its move_pages calls (a call per batch into room, two per
    batch of swaps) and pages; it saves its samples times ``cost.sample_ns``.
    Returns the ``k`` with the largest saving less cost, 0 if none is positive.
    """
    per_page = PAGE_SIZE / float(1 << 20)  # density (per MiB) -> per page
    free = min(free, len(promote))
    swaps = min(len(promote) - free, len(demote))
    # one standard error toward no gain: the candidates were picked for their
    # high (or low) estimates, which overstate the difference on average
    hot = np.maximum(promote.density - promote.noise, 0.0)[: free + swaps]
    cold = (demote.density + demote.noise)[:swaps]
    gain = np.concatenate((hot[:free], np.maximum(hot[free:] - cold, 0.0))) * (
        per_page * cost.sample_ns
    )
    return _best_prefix(gain, free, batch_pages, cost)[0]


def _best_prefix(
    gain: F64, free: int, batch_pages: int, cost: MoveCost
) -> tuple[int, float]:
    """(k, net): the prefix of moves worth ``gain`` (ns each, the first
    ``free`` into room, the rest swaps) with the largest saving less the cost
    of its calls and pages, and that net saving; (0, 0.0) if none is positive."""
    if gain.shape[0] == 0:
        return 0, 0.0
    k = np.arange(1, gain.shape[0] + 1)
    into_room = np.minimum(k, free)
    swapped = k - into_room
    calls = -(-into_room // batch_pages) + 2 * -(-swapped // batch_pages)
    pages = into_room + 2 * swapped
    net = np.cumsum(gain) - calls * cost.call_ns - pages * cost.page_ns
    best = int(np.argmax(net))
    return (best + 1, float(net[best])) if net[best] > 0.0 else (0, 0.0)


class Waiting(NamedTuple):
    """What a round left waiting on samples (:func:`waiting_value`)."""

    waiting: int  # candidates more samples could still move
    paying: int  # of those, the ones whose moves would pay at their estimates
    value_ns: float  # what moving those would save, net (0.0 without a cost)


def waiting_value(
    promote: Candidates,
    demote: Candidates,
    free_pages: int,
    moved: int,
    long_memory: BoolArray,
    min_gain: float,
    z: float = 2.0,
    z_own: float | None = None,
    cost: MoveCost | None = None,
    batch_pages: int = 1,
) -> Waiting:
    """What a round left waiting on samples (the round had ``free_pages`` of
    room, the demotion candidates ``demote`` and moved the first ``moved`` of
    ``promote``): the unmoved promotion candidates more samples could still
    move, those of them whose moves would pay, and what moving them would save.

    A candidate waits on samples if its estimate grows with them
    (``long_memory``: a resolved page, whose count is kept over many epochs)
    or if it already passes the round's noise test (into free room, or
    :func:`clearly_denser` than the cold page it pairs with) and waits only
    for its gain to pay for a move, or for bandwidth. A page of a hot range
    that fails the noise test does not: the range's count reaches its steady
    level in a few epochs, and more epochs at the same rate leave it there.

    With ``cost`` (a known value of a sample), ``paying`` counts the waiting
    candidates in the prefix that would pay for its moves at their current
    estimates (:func:`paying_prefix` without the standard error it counts
    toward no gain): more samples narrow an estimate, they do not raise it,
    so moves that would not pay if the estimates were exact wait on nothing.
    ``value_ns`` is their moves' net value (ns over the payback horizon, the
    moves' cost deducted) at the shrunk estimates
    (:meth:`Candidates.expected`: a resolved page picked for its high count
    overstates its rate on average): what resolving them is worth, for the
    sampling boost (:class:`agent_guest.policy.SampleBoost`). Without
    ``cost``, every waiting candidate counts as paying, worth 0.0.
    """
    room = min(max(0, free_pages), len(promote))
    pairs = min(len(promote) - room, len(demote))
    passes = np.zeros(len(promote), bool)
    passes[:room] = True
    if pairs:
        hot, cold = promote.take(room, room + pairs), demote.take(0, pairs)
        passes[room : room + pairs] = clearly_denser(
            hot, cold, min_gain, pair_z(hot, z, z_own)
        )
    left = passes | long_memory
    left[: min(moved, len(promote))] = False
    waiting = int(np.count_nonzero(left))
    if cost is None or cost.sample_ns <= 0.0 or not waiting:
        return Waiting(waiting, waiting, 0.0)
    paying, value = _paying_at_estimates(promote, demote, room, left, batch_pages, cost)
    return Waiting(waiting, paying, value)


def _paying_at_estimates(
    promote: Candidates,
    demote: Candidates,
    room: int,
    left: BoolArray,
    batch_pages: int,
    cost: MoveCost,
) -> tuple[int, float]:
    """How many of the candidates ``left`` (a mask over ``promote``; the first
    ``room`` go into free room, the others pair with ``demote`` in order, or
    with a page of no density where it runs out) are in the prefix that pays
    for its moves at the estimates themselves, noise not counted, and what
    moving them is worth on average: the best prefix's net saving (ns) at the
    shrunk estimates (:meth:`Candidates.expected`), picked for high counts as
    they are."""
    idx = np.flatnonzero(left)
    into_room = int(np.count_nonzero(idx < room))
    j = idx[into_room:] - room
    cold = np.zeros(j.shape[0])
    paired = j < len(demote)
    cold[paired] = demote.density[j[paired]]
    per_page = PAGE_SIZE / float(1 << 20)  # density (per MiB) -> per page

    def gain(hot: F64) -> F64:
        g = np.concatenate((hot[:into_room], np.maximum(hot[into_room:] - cold, 0.0)))
        return g * (per_page * cost.sample_ns)

    count, value = _best_prefix(
        gain(promote.density[idx]), into_room, batch_pages, cost
    )
    if count == 0 or promote.shrunk is None:
        return count, value
    return count, _best_prefix(
        gain(promote.expected()[idx]), into_room, batch_pages, cost
    )[1]


def pair_z(hot: Candidates, z: float, z_own: float | None) -> float | F64:
    """The noise test's ``z`` per pair: ``z`` where the hot page's estimate is
    its range's, ``z_own`` where it is its own count in a range whose pages
    differ beyond Poisson noise (``trust`` 1), in proportion between."""
    if z_own is None or hot.trust is None:
        return z
    return z + (z_own - z) * hot.trust


def _counts(c: Candidates) -> tuple[F64, F64]:
    """(samples, density per sample) behind each candidate's estimate.

    A unit (range or page) with ``n`` samples has ``density = n * s`` and
    ``noise = sqrt(n + 1) * s``, so ``s`` and ``n`` follow from the two."""
    d = np.maximum(c.density, 0.0)
    u = np.square(c.noise)
    s = (np.sqrt(d * d + 4.0 * u) - d) / 2.0
    s = np.maximum(s, 1e-300)
    return d / s, s


def clearly_denser(
    hot: Candidates,
    cold: Candidates,
    min_gain: float,
    z: float | F64,
) -> BoolArray:
    """Per pair: is the hot unit denser than ``(1 + min_gain)`` x the cold one,
    beyond sampling noise?

    Counts go through Anscombe's variance-stabilising transform (``2 sqrt(n +
    3/8)`` is close to unit-variance normal even for a handful of samples,
    where ``n +- sqrt(n)`` is not: 4 samples against ~0 expected are strong
    evidence). With ``r`` one cold sample in the hot unit's samples
    (``(1 + min_gain) s_cold / s_hot``, ``s`` the density of one sample), the
    hot count ``2 sqrt(n_hot + 3/8)`` must exceed the cold one's
    ``2 sqrt(r (n_cold + 3/8))`` by a margin:

    - for a unit whose estimate may drift beyond Poisson noise (a range's
      decayed count, a page whose range's pages differ only by chance), the
      cold unit counts at its upper bound (``z`` standard errors) and the hot
      count must exceed the count that bound predicts by ``z`` more;
    - for a resolved page whose range's pages differ beyond Poisson noise
      (``trust`` 1, :meth:`Candidates.trusted`), both counts are Poisson
      evidence and their noises add in variance: ``z sqrt(1 + r (n_cold + 1)
      / (n_cold + 3/8))`` (the cold estimate's ``sqrt(n + 1)`` carried through
      the transform), where the first margin asks two pages of equal counts
      for about ``z (1 + sqrt r)``;

    in proportion between (as :func:`pair_z`).
    """
    n_hot, s_hot = _counts(hot)
    n_cold, s_cold = _counts(cold)
    r = (1.0 + min_gain) * s_cold / s_hot  # one cold sample, in hot samples
    at_cold = 2.0 * np.sqrt(r * (n_cold + 0.375))
    diff = 2.0 * np.sqrt(n_hot + 0.375) - at_cold
    bound = r * (n_cold + z * np.sqrt(n_cold + 1.0))  # upper bound, hot samples
    upper = z + 2.0 * np.sqrt(bound + 0.375) - at_cold
    joint = z * np.sqrt(1.0 + r * (n_cold + 1.0) / (n_cold + 0.375))
    trust = hot.trusted()
    ok: BoolArray = (diff > (1.0 - trust) * upper + trust * joint) & (
        hot.density > (1.0 + min_gain) * cold.density
    )
    return ok


def pages_of_ranges(
    start: U64, end: U64, limit: int
) -> tuple[U64, npt.NDArray[np.intp]]:
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
