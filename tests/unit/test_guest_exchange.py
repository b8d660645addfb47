"""exchange: batch planning, rate limiter, page enumeration, errno rules."""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_guest import backend as api
from agent_guest.classify import RangeTable
from agent_guest.config import ClassifyConfig, MoverConfig
from agent_guest.errors import NoSuchProcess
from agent_guest.exchange import SHORT_HALVING, Exchanger, errno_name
from agent_guest.plan import (
    Candidates,
    MoveCost,
    clearly_denser,
    pages_of_ranges,
    pair_z,
    paying_prefix,
    plan_exchange,
    waiting_value,
)
from agent_guest.ratelimit import RateLimiter
from agent_guest.selection import select_hot
from hypertier_common.errors import AccessDenied

BASE = 0x7F0000000000
COLD_BASE = BASE + (1 << 30)  # where the cold candidates' pages start


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        self.now += timeout_s
        return event.is_set()


def _cands(
    n: int,
    density: float | npt.ArrayLike,
    *,
    noise: float | npt.ArrayLike = 0.1,
    pid: int = 1,
    base: int = BASE,
) -> Candidates:
    """``n`` consecutive pages of ``pid`` from ``base`` with ``density`` and
    ``noise`` (each one value for all pages or one per page)."""
    return Candidates(
        np.full(n, pid, np.int32),
        (base + np.arange(n, dtype=np.uint64) * 4096).astype(np.uint64),
        np.full(n, density, np.float64),
        np.full(n, noise, np.float64),
    )


def _sizes(batches: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    return [(b.to, len(b.pages)) for b in batches]


def test_over_allotment_demotes_the_excess_before_any_promotion() -> None:
    plan = plan_exchange(_cands(10, 100.0), _cands(50, 1.0), -30, 1000, 16)
    assert _sizes(plan)[:2] == [("slow", 16), ("slow", 14)]
    assert _sizes(plan)[2:] == [("slow", 10), ("fast", 10)]  # then pairs


def test_free_room_is_used_before_any_demotion() -> None:
    plan = plan_exchange(_cands(10, 100.0), _cands(50, 1.0), 4, 1000, 16)
    assert _sizes(plan)[0] == ("fast", 4)


def test_exchange_pairs_are_symmetric_and_demote_goes_first() -> None:
    plan = plan_exchange(_cands(40, 100.0), _cands(40, 1.0), 0, 1000, 16)
    assert _sizes(plan) == [
        ("slow", 16),
        ("fast", 16),
        ("slow", 16),
        ("fast", 16),
        ("slow", 8),
        ("fast", 8),
    ]


def test_budget_bounds_pages_moved_in_both_directions() -> None:
    plan = plan_exchange(_cands(40, 100.0), _cands(40, 1.0), 0, 20, 16)
    assert sum(len(b.pages) for b in plan) == 20


def test_near_equal_densities_never_swap() -> None:
    plan = plan_exchange(_cands(40, 10.0), _cands(40, 9.0), 0, 1000, 16, min_gain=0.25)
    assert plan == []


# a sample of density moved saves 1 us; a call costs 100 us, a page 1 us
COST = MoveCost(call_ns=100e3, page_ns=1e3, sample_ns=1e3)
PER_PAGE = 4096 / float(1 << 20)  # density (samples per MiB) -> samples per page


def test_a_round_goes_only_where_it_pays_for_its_calls_and_pages() -> None:
    # 16 swaps of 8 samples/page against none save 128 us; they cost two calls
    # (a demote and a promote batch) and 32 pages: 232 us
    hot, cold = _cands(16, 8.0 / PER_PAGE), _cands(40, 0.0)
    assert _sizes(plan_exchange(hot, cold, 0, 1000, 16)) == [("slow", 16), ("fast", 16)]
    assert plan_exchange(hot, cold, 0, 1000, 16, cost=COST) == []
    # at 16 samples/page they save 256 us: the round goes whole
    rich = _cands(16, 16.0 / PER_PAGE)
    assert _sizes(plan_exchange(rich, cold, 0, 1000, 16, cost=COST)) == [
        ("slow", 16),
        ("fast", 16),
    ]
    # over the limit, demotions are due whatever they gain
    over = plan_exchange(hot, cold, -8, 1000, 16, cost=COST)
    assert _sizes(over) == [("slow", 8)]


def test_the_paying_prefix_stops_where_the_next_batch_costs_more() -> None:
    # 16 swaps worth 40 samples each, then 16 worth 1: the second batch's two
    # calls (200 us) and 32 pages cost more than its 16 us
    hot = _cands(32, np.r_[np.full(16, 40.0), np.full(16, 1.0)] / PER_PAGE)
    cold = _cands(32, 0.0, base=COLD_BASE)
    assert paying_prefix(hot, cold, 0, 16, COST) == 16
    # into free room a move is one page and one call per batch
    assert paying_prefix(hot, cold, 32, 16, COST) == 16
    assert paying_prefix(hot, cold, 0, 16, MoveCost(0.0, 0.0, 1.0)) == 32


@given(
    n_hot=st.integers(0, 40),
    n_cold=st.integers(0, 40),
    free=st.integers(-20, 20),
    budget=st.integers(0, 100),
    sample_ns=st.floats(0.0, 1e5),
    seed=st.integers(0, 2**16),
)
def test_the_cost_gate_only_shortens_the_optional_moves(
    n_hot: int, n_cold: int, free: int, budget: int, sample_ns: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    hot = _cands(n_hot, np.sort(rng.uniform(0, 500, n_hot))[::-1])
    cold = _cands(n_cold, np.sort(rng.uniform(0, 50, n_cold)), base=COLD_BASE)
    cost = MoveCost(100e3, 1e3, sample_ns)
    plain = plan_exchange(hot, cold, free, budget, 8)
    gated = plan_exchange(hot, cold, free, budget, 8, cost=cost)
    moved = {(b.to, int(a)) for b in plain for a in b.pages.addr}
    kept = {(b.to, int(a)) for b in gated for a in b.pages.addr}
    assert kept <= moved
    # the demotions due over the limit all stay; promotions never outnumber
    # the room plus the demotions, so the limit holds
    due = min(max(0, -free), n_cold, budget)
    demoted = sum(len(b.pages) for b in gated if b.to == "slow")
    promoted = sum(len(b.pages) for b in gated if b.to == "fast")
    assert demoted >= due
    assert promoted <= max(0, free) + demoted - due


def test_only_candidates_more_samples_can_move_are_waiting() -> None:
    no = np.zeros(4, bool)
    # into free room every unmoved candidate waits (on its gain paying)
    hot = _cands(4, 500.0)
    assert waiting_value(hot, Candidates.empty(), 4, 1, no, 0.25)[0] == 3
    # swaps: one clearly denser than its cold page waits, one lost in the noise
    # of a range that will not gather more evidence does not
    cold = _cands(4, 0.0, base=COLD_BASE)
    noisy = _cands(4, np.r_[500.0, 500.0, 1.0, 1.0], noise=np.r_[0.1, 0.1, 5.0, 5.0])
    assert waiting_value(noisy, cold, 0, 0, no, 0.25)[0] == 2
    # ... unless it is a resolved page, whose count grows with samples
    resolved = np.array([False, False, False, True])
    assert waiting_value(noisy, cold, 0, 0, resolved, 0.25)[0] == 3
    # a candidate with no cold page to pair with waits only if resolved
    assert waiting_value(noisy, Candidates.empty(), 0, 0, resolved, 0.25)[0] == 1
    # the moved prefix never waits
    assert waiting_value(noisy, cold, 0, 2, resolved, 0.25)[0] == 1


def test_a_candidate_waits_only_if_its_move_would_pay_at_its_estimate() -> None:
    """XSBench at 1/8: a resolved page with 3 samples whose move the payback
    gate defers every round, and whose estimate, even exact, does not pay a
    round's two move_pages calls, held the sampler unsettled for 1.2 s."""
    resolved = np.ones(1, bool)
    hot = _cands(1, 10.2, noise=6.8)
    cold = _cands(1, 0.2, base=COLD_BASE)
    assert waiting_value(hot, cold, 0, 0, resolved, 0.25)[0] == 1  # no cost: it waits
    # a sample of density moved is worth 12 µs; 10 of density per MiB is 0.04
    # samples a page: 0.5 ms saved against 1 ms of calls, even if exact
    cost = MoveCost(500e3, 3e3, 12.2e6)
    assert paying_prefix(hot, cold, 0, 512, cost) == 0
    waits = waiting_value(hot, cold, 0, 0, resolved, 0.25, cost=cost, batch_pages=512)
    assert (waits.waiting, waits.paying) == (1, 0)
    # the same page when a sample is worth 4x as much: exact, it would pay
    # (with its noise counted it does not yet): more samples may move it
    dear = MoveCost(500e3, 3e3, 4 * 12.2e6)
    assert paying_prefix(hot, cold, 0, 512, dear) == 0
    waits = waiting_value(hot, cold, 0, 0, resolved, 0.25, cost=dear, batch_pages=512)
    assert (waits.waiting, waits.paying) == (1, 1)
    # what resolving it is worth: its gain at the estimate (10 samples per
    # MiB more than its cold partner) less two calls and two pages
    worth = 10.0 * PER_PAGE * dear.sample_ns - 2 * 500e3 - 2 * 3e3
    _, count, value = waiting_value(hot, cold, 0, 0, resolved, 0.25, cost=dear,
                                    batch_pages=512)  # fmt: skip
    assert count == 1
    assert value == pytest.approx(worth)
    assert waiting_value(hot, cold, 0, 0, resolved, 0.25, cost=cost,
                         batch_pages=512) == (1, 0, 0.0)  # fmt: skip
    assert waiting_value(hot, cold, 0, 0, resolved, 0.25) == (1, 1, 0.0)
    # many such pages pay together where one alone does not
    many = _cands(8, 10.2, noise=6.8)
    colds = _cands(8, 0.2, base=COLD_BASE)
    assert waiting_value(many, colds, 0, 0, np.ones(8, bool), 0.25, cost=cost,
                         batch_pages=512).paying == 8  # fmt: skip


def test_waiting_moves_are_worth_their_shrunk_estimates() -> None:
    """BFS at 1/8: 3,500 resolved pages of ~3 samples, picked for their high
    counts, were valued at those counts (~80 ms over the horizon) and kept the
    boost on to the end of the run; shrunk toward their ranges' mean page
    they are worth less, and the count that waits is the same."""
    cost = MoveCost(500e3, 3e3, 4 * 12.2e6)
    cold = _cands(1, 0.2, base=COLD_BASE)
    resolved = np.ones(1, bool)

    def page(shrunk: float | None) -> Candidates:
        return Candidates(np.ones(1, np.int32), np.full(1, BASE, np.uint64),
                          np.r_[10.2], np.r_[6.8], np.r_[0.5],
                          None if shrunk is None else np.r_[shrunk])  # fmt: skip

    face = waiting_value(page(None), cold, 0, 0, resolved, 0.25, cost=cost,
                         batch_pages=512)  # fmt: skip
    shrunk = waiting_value(page(8.2), cold, 0, 0, resolved, 0.25, cost=cost,
                           batch_pages=512)  # fmt: skip
    assert face.paying == shrunk.paying == 1
    assert face.value_ns - shrunk.value_ns == pytest.approx(
        2.0 * PER_PAGE * cost.sample_ns
    )
    # shrunk below what its move costs: still waiting, worth nothing
    assert waiting_value(page(1.0), cold, 0, 0, resolved, 0.25, cost=cost,
                         batch_pages=512) == (1, 1, 0.0)  # fmt: skip
    # the shrunk estimate survives picking and joining
    both = page(8.2).then(_cands(2, 3.0))
    assert both.expected().tolist() == [8.2, 3.0, 3.0]
    assert both.pick(np.r_[2, 0]).expected().tolist() == [3.0, 8.2]


def test_a_resolved_candidate_is_shrunk_toward_its_ranges_mean_page() -> None:
    """Pages of a range that differ only by Poisson noise (trust 0): the one
    that drew the most samples is worth the range's mean page, not its count."""
    t = RangeTable(ClassifyConfig(split_min_samples=1e9))
    t.set_vmas([api.Vma(BASE, BASE + (64 << 12), "rw-p")], max_ranges=1)
    rng = np.random.default_rng(5)
    for _ in range(4):
        page = rng.integers(0, 64, 400)
        t.add_samples((BASE + page * 4096).astype(np.uint64))
        t.end_epoch()
    select_hot({1: t}, 16 * 4096, 0.0)
    ex = Exchanger(_Backend(None, set()), MoverConfig(batch_pages=64), _Clock())
    c = ex._resolved_pages({1: t}, [1], True, False)
    assert len(c) > 0
    assert c.trust is not None
    assert c.shrunk is not None
    assert np.all(c.trust < 0.05)
    r = t.resolved()
    per_sample = r.density[0] / r.count[0]
    mean = float(t.page_mean()[0])
    assert mean == pytest.approx(r.count.sum() / 64, rel=0.05)
    assert np.allclose(c.shrunk, per_sample * mean, rtol=0.05)
    assert np.all(c.shrunk <= c.density.max())
    assert c.shrunk.max() < c.density.max()


@given(
    n=st.integers(0, 30),
    n_cold=st.integers(0, 30),
    free=st.integers(-10, 40),
    moved=st.integers(0, 40),
    seed=st.integers(0, 2**16),
    priced=st.booleans(),
)
def test_waiting_candidates_are_unmoved_and_include_every_resolved_one(
    n: int, n_cold: int, free: int, moved: int, seed: int, priced: bool
) -> None:
    rng = np.random.default_rng(seed)
    hot = _cands(n, np.sort(rng.uniform(0, 100, n))[::-1], noise=rng.uniform(0, 10, n))
    cold = _cands(
        n_cold,
        np.sort(rng.uniform(0, 10, n_cold)),
        noise=rng.uniform(0, 2, n_cold),
        base=COLD_BASE,
    )
    resolved = rng.random(n) < 0.3
    w, paying, _ = waiting_value(hot, cold, free, moved, resolved, 0.25)
    assert paying == w
    unmoved = max(0, n - moved)
    assert int(resolved[min(moved, n) :].sum()) <= w <= unmoved
    room = max(0, min(free, n) - moved)
    assert w >= room
    if priced:  # with a price, a subset of them: those whose moves would pay
        cost = MoveCost(500e3, 3e3, float(rng.uniform(0.0, 1e9)))
        priced = waiting_value(hot, cold, free, moved, resolved, 0.25, cost=cost)
        assert priced.waiting == w
        assert 0 <= priced.paying <= w


def test_noisy_densities_never_swap() -> None:
    """~5 samples where a precise cold estimate predicts 2.5: Poisson noise."""
    noisy = _cands(4, 10.0, noise=5.0)
    cold = _cands(4, 5.0)
    assert plan_exchange(noisy, cold, 0, 100, 16, z=2.0) == []


def test_a_few_samples_against_none_are_evidence() -> None:
    """4 samples where the cold side predicts ~0.1: swap, though 4 +- 2.2 at two
    standard errors would include zero."""
    few = _cands(4, 4.0, noise=np.sqrt(5.0))
    cold = _cands(4, 0.0, noise=0.05, base=COLD_BASE)
    assert _sizes(plan_exchange(few, cold, 0, 100, 16, z=2.0)) == [
        ("slow", 4),
        ("fast", 4),
    ]
    fewer = _cands(4, 1.0, noise=np.sqrt(2.0))
    assert plan_exchange(fewer, cold, 0, 100, 16, z=2.0) == []


@given(
    n_hot=st.floats(0.0, 1e4),
    n_cold=st.floats(0.0, 1e4),
    s_hot=st.floats(1e-3, 1e3),
    s_cold=st.floats(1e-3, 1e3),
)
def test_clearly_denser_is_consistent(
    n_hot: float, n_cold: float, s_hot: float, s_cold: float
) -> None:
    """Never for a unit no denser than the cold one; always beyond a wide margin;
    monotone in the hot unit's samples."""

    def c(n: float, s: float) -> Candidates:
        return Candidates(
            np.ones(1, np.int32),
            np.zeros(1, np.uint64),
            np.array([n * s]),
            np.array([np.sqrt(n + 1.0) * s]),
        )

    cold = c(n_cold, s_cold)
    ok = bool(clearly_denser(c(n_hot, s_hot), cold, 0.25, 2.0)[0])
    if n_hot * s_hot <= 1.25 * n_cold * s_cold:
        assert not ok
    if ok:
        assert clearly_denser(c(n_hot * 2 + 1, s_hot), cold, 0.25, 2.0)[0]
    bound = s_cold * (n_cold + 2.0 * np.sqrt(n_cold + 1.0)) * 1.25 / s_hot
    if n_hot > 4.0 * bound + 16.0:
        assert ok


def test_rate_limiter_grants_at_most_rate_times_time() -> None:
    clock = _Clock()
    lim = RateLimiter(1.0, clock, burst_s=1.0)
    assert lim.take(10 << 20) == 1 << 20
    assert lim.take(1) == 0
    clock.now += 0.5
    assert lim.take(10 << 20) == 1 << 19


def test_rate_limiter_burst_is_capped() -> None:
    clock = _Clock()
    lim = RateLimiter(1.0, clock, burst_s=1.0)
    clock.now += 100.0
    assert lim.available() == 1 << 20


def test_pages_of_ranges_enumerates_in_range_order_up_to_limit() -> None:
    start = np.array([BASE + 8192, BASE], np.uint64)
    end = np.array([BASE + 16384, BASE + 8192], np.uint64)
    addr, idx = pages_of_ranges(start, end, 3)
    assert (addr - BASE).tolist() == [8192, 12288, 0]
    assert idx.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("code", "name"),
    [pytest.param(16, "EBUSY", id="ebusy"), pytest.param(-14, "EFAULT", id="neg")],
)
def test_errno_name(code: int, name: str) -> None:
    assert errno_name(code) == name


class _Backend:
    """Two nodes; every page of pid 1 is on ``node``; moves give ``statuses``."""

    def __init__(
        self,
        statuses: npt.NDArray[np.int32] | None,
        dead: set[int],
        demote_statuses: npt.NDArray[np.int32] | None = None,
    ) -> None:
        self.statuses = statuses
        self.demote_statuses = demote_statuses
        self.dead = dead
        self.forbidden: set[int] = set()
        self.moves: list[tuple[int, int, int]] = []

    def capabilities(self) -> frozenset[api.Capability]:
        return frozenset({api.Capability.MOVE_PAGES})

    def numa_nodes(self) -> Sequence[api.NumaNode]:
        return []

    def processes(self) -> Sequence[api.ProcessInfo]:
        return []

    def vmas(self, pid: int) -> Sequence[api.Vma]:
        return []

    def start_sampling(
        self, pids: Sequence[int], settings: api.SamplerSettings
    ) -> None:
        pass

    def read_samples(self) -> api.AccessSamples:
        raise NotImplementedError

    def stop_sampling(self) -> None:
        pass

    def page_nodes(
        self, pid: int, addrs: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.int32]:
        if pid in self.dead:
            raise NoSuchProcess(pid)
        if pid in self.forbidden:
            raise AccessDenied(f"move_pages(pid={pid})")
        # pid 1: hot pages on slow (1); pid 2: cold pages on fast (0)
        return np.full(addrs.shape[0], 1 if pid == 1 else 0, np.int32)

    def move_pages(
        self, pid: int, addrs: npt.NDArray[np.uint64], node: int
    ) -> api.MoveResult:
        if pid in self.dead:
            raise NoSuchProcess(pid)
        self.moves.append((pid, node, int(addrs.shape[0])))
        st = np.full(addrs.shape[0], node, np.int32)
        given = self.statuses if node == 0 else self.demote_statuses
        if given is not None:
            # page i of the range gets given[i]
            i = ((addrs - BASE) // 4096).astype(np.int64)
            has = i < given.shape[0]
            st[has] = given[i[has]]
        return api.MoveResult(st.shape[0], int((st == node).sum()), st)

    def channel_send(self, line: bytes) -> None:
        pass

    def channel_recv(self) -> bytes:
        return b""

    def cpu_time_s(self) -> float:
        return 0.0

    def counters(self) -> Mapping[str, int]:
        return {}

    def close(self) -> None:
        pass


def _tables() -> dict[int, RangeTable]:
    hot, cold = RangeTable(ClassifyConfig()), RangeTable(ClassifyConfig())
    hot.set_vmas([api.Vma(BASE, BASE + (64 << 12), "rw-p")], max_ranges=1)
    cold.set_vmas([api.Vma(BASE, BASE + (64 << 12), "rw-p")], max_ranges=1)
    hot.count, hot.hot = np.array([1000.0]), np.array([True])
    cold.count, cold.hot = np.array([0.0]), np.array([False])
    hot.mass, cold.mass = hot.count.copy(), cold.count.copy()
    return {1: hot, 2: cold}


def test_a_round_counts_as_waiting_only_candidates_more_samples_can_move() -> None:
    cfg = MoverConfig(batch_pages=64, scan_pages=64)
    # a hot range clearly denser than the cold one (4,000 +- 127 samples a
    # MiB: 15.6 a page, 15.1 less a standard error), whose swap does not pay
    # yet with its noise counted (64 x 15.1 against two calls of 492) but
    # would if the estimates were exact (64 x 15.6): all 64 pages wait
    ex = Exchanger(_Backend(None, set()), cfg, _Clock())
    near = MoveCost(call_ns=492.0, page_ns=0.0, sample_ns=1.0)
    assert ex.run(_tables(), [0], [1], 0, 1, 0, near) == (0, 0)
    assert ex.pending == 64
    assert ex.deferred == 0
    # a swap that would not pay even if the estimates were exact (a call
    # costs 1 s) is deferred: more samples narrow them, they do not raise them
    ex = Exchanger(_Backend(None, set()), cfg, _Clock())
    dear = MoveCost(call_ns=1e9, page_ns=1e3, sample_ns=1.0)
    assert ex.run(_tables(), [0], [1], 0, 1, 0, dear) == (0, 0)
    assert (ex.pending, ex.deferred) == (0, 64)
    # a range with 2 samples against none is noise that the range's count,
    # steady within a few epochs, will not resolve: nothing waits
    tables = _tables()
    tables[1].count = tables[1].mass = np.array([2.0])
    ex = Exchanger(_Backend(None, set()), cfg, _Clock())
    assert ex.run(tables, [0], [1], 0, 1, 0, dear) == (0, 0)
    assert ex.pending == 0


def test_partial_failures_are_counted_by_errno() -> None:
    st = np.array([-errno.EBUSY, -errno.EFAULT, -errno.ENOENT, -errno.ENOMEM], np.int32)
    be = _Backend(st, set())
    ex = Exchanger(be, MoverConfig(batch_pages=64, scan_pages=64), _Clock())
    promoted, demoted = ex.run(_tables(), [0], [1], 0, 1, 0)
    assert demoted == 64
    assert promoted == 60
    assert dict(ex.stats.failures) == {
        "EBUSY": 1,
        "EFAULT": 1,
        "ENOENT": 1,
        "ENOMEM": 1,
    }


class _FullNode(_Backend):
    """Node 0 takes ``room`` more pages; each page moved off it makes room."""

    def __init__(self, room: int) -> None:
        super().__init__(None, set())
        self.room = room

    def move_pages(
        self, pid: int, addrs: npt.NDArray[np.uint64], node: int
    ) -> api.MoveResult:
        self.moves.append((pid, node, int(addrs.shape[0])))
        st = np.full(addrs.shape[0], node, np.int32)
        if node == 0:
            st[self.room :] = -errno.ENOMEM
            self.room = max(0, self.room - addrs.shape[0])
        else:
            self.room += addrs.shape[0]
        return api.MoveResult(st.shape[0], int((st == node).sum()), st)


def test_room_the_node_refuses_is_learnt_and_exchanged_for() -> None:
    # The budget sees 32 free pages; the kernel keeps them (its watermark).
    be = _FullNode(room=0)
    ex = Exchanger(be, MoverConfig(batch_pages=16, scan_pages=64), _Clock())
    # the first batch into the room fails; the round goes on with exchanges
    assert ex.run(_tables(), [0], [1], 0, 1, 32) == (32, 32)
    assert ex.stats.failures["ENOMEM"] == 16
    assert ex.short_pages == 32
    # Next round: no room assumed, so the other hot pages come in by exchange.
    assert ex.run(_tables(), [0], [1], 0, 1, 32) == (32, 32)
    assert ex.stats.failures["ENOMEM"] == 16
    # While the node keeps refusing, it is probed once per SHORT_HALVING rounds
    for _ in range(4 * SHORT_HALVING):
        ex.run(_tables(), [0], [1], 0, 1, 32)
    assert ex.stats.failures["ENOMEM"] <= 16 + 4 * 16
    assert ex.short_pages >= 16
    # once the node has the room, the learnt shortfall fades
    be.room = 1 << 20
    for _ in range(7 * SHORT_HALVING):
        ex.run(_tables(), [0], [1], 0, 1, 32)
    assert ex.short_pages == 0


def test_demotions_that_fail_over_the_limit_are_made_up_by_others() -> None:
    busy = np.full(4, -errno.EBUSY, np.int32)
    be = _Backend(None, set(), demote_statuses=busy)
    ex = Exchanger(be, MoverConfig(batch_pages=64, scan_pages=64), _Clock())
    tables = _tables()
    tables[1].hot = np.array([False])  # nothing to promote: only the overflow
    promoted, demoted = ex.run(tables, [0], [1], 0, 1, -8)
    assert (promoted, demoted) == (0, 8)
    assert [m[2] for m in be.moves if m[1] == 1] == [8, 4]
    assert ex.stats.failures["EBUSY"] == 4


def test_a_page_busy_too_often_is_dropped_from_candidates() -> None:
    st = np.array([-errno.EBUSY], np.int32)
    be = _Backend(st, set())
    ex = Exchanger(
        be, MoverConfig(batch_pages=64, scan_pages=64, max_busy_retries=1), _Clock()
    )
    clock_tables = _tables()
    for _ in range(3):
        ex.run(clock_tables, [0], [1], 0, 1, 64)
    assert ex.stats.failures["EBUSY"] == 2  # tried twice, then dropped


def test_a_process_that_exits_is_dropped_cleanly() -> None:
    be = _Backend(None, {1})
    ex = Exchanger(be, MoverConfig(batch_pages=64, scan_pages=64), _Clock())
    promoted, demoted = ex.run(_tables(), [0], [1], 0, 1, 0)
    assert (promoted, demoted) == (0, 0)
    assert ex.gone == {1}
    assert ex.stats.dropped_pids == 1


def test_promotions_never_exceed_the_room_demotions_made() -> None:
    be = _Backend(None, set())
    ex = Exchanger(be, MoverConfig(batch_pages=16, scan_pages=64), _Clock())
    promoted, demoted = ex.run(_tables(), [0], [1], 0, 1, 0)
    assert promoted == demoted == 64
    to_fast = [n for _, node, n in be.moves if node == 0]
    to_slow = [n for _, node, n in be.moves if node == 1]
    assert to_fast == to_slow == [16, 16, 16, 16]


def test_the_mover_respects_its_bandwidth_limit() -> None:
    be = _Backend(None, set())
    # 1 MiB/s = 256 pages/s; one second's burst.
    ex = Exchanger(
        be, MoverConfig(max_bandwidth_mib_s=1, batch_pages=16, scan_pages=64), _Clock()
    )
    ex.run(_tables(), [0], [1], 0, 1, 1000)
    assert sum(n for _, _, n in be.moves) <= 256


def _cooling_exchanger(cooldown_epochs: int) -> Exchanger:
    """An exchanger whose moved pages cool down for ``cooldown_epochs``, without
    the node cache: this backend never shows a page where it moved."""
    cfg = MoverConfig(
        batch_pages=64,
        scan_pages=64,
        cooldown_epochs=cooldown_epochs,
        placement_ttl_epochs=0,
    )
    return Exchanger(_Backend(None, set()), cfg, _Clock())


def test_a_moved_page_does_not_move_again_during_the_cooldown() -> None:
    ex = _cooling_exchanger(2)
    tables = _tables()
    assert ex.run(tables, [0], [1], 0, 1, 64) == (64, 0)  # free room: promote
    assert ex.run(tables, [0], [1], 0, 1, 64) == (0, 0)  # same pages: cooling down
    assert ex.run(tables, [0], [1], 0, 1, 64) == (64, 0)  # cooled down


def test_the_cooldown_never_blocks_getting_under_the_allotment() -> None:
    ex = _cooling_exchanger(8)
    tables = _tables()
    ex.run(tables, [0], [1], 0, 1, 0)  # swaps: pid 2's pages demoted
    _, demoted = ex.run(tables, [0], [1], 0, 1, -64)
    assert demoted == 64


def test_a_process_we_may_not_touch_is_given_up_not_fatal() -> None:
    be = _Backend(None, set())
    be.forbidden.add(1)
    ex = Exchanger(be, MoverConfig(batch_pages=64, scan_pages=64), _Clock())
    assert ex.run(_tables(), [0], [1], 0, 1, 64) == (0, 0)
    assert ex.denied == {1}
    assert ex.stats.failures["EPERM"] == 1


def test_a_hot_page_in_a_cold_range_is_promoted_and_never_demoted() -> None:
    be = _Backend(None, set())
    tables = _tables()
    hot_page = BASE + 8 * 4096
    cold = tables[2]
    for _ in range(3):  # hot: sampled epoch after epoch
        cold.add_samples(np.full(50, hot_page, np.uint64))
        cold.end_epoch()
    select_hot({2: cold}, 4096, 0.0)  # room for the one page
    assert cold.pages.hot_addr.tolist() == [hot_page]
    assert not cold.hot.any()
    ex = Exchanger(be, MoverConfig(batch_pages=64, scan_pages=64), _Clock())
    demote = ex._find(tables, False, [0], 64)
    assert hot_page not in demote.addr[demote.pid == 2].tolist()
    for _ in range(3):
        tables[1].add_samples(np.full(50, hot_page, np.uint64))
        tables[1].end_epoch()
    select_hot({1: tables[1]}, 4096, 0.0)
    assert not tables[1].hot.any()  # pid 1 has no hot range
    promote = ex._find(tables, True, [1], 64)
    assert promote.addr.tolist() == [hot_page]


def test_a_search_cut_short_still_offers_the_coldest_pages() -> None:
    # pid 2's first 16 pages are warm (sampled, resolved, not selected hot);
    # its other 48 pages are never touched: those go first
    tables = _tables()
    cold = tables[2]
    warm = BASE + np.arange(16, dtype=np.uint64) * np.uint64(4096)
    for _ in range(3):
        cold.add_samples(np.repeat(warm, 10))
        cold.end_epoch()
    select_hot({2: cold}, 0, 0.0)
    assert len(cold.resolved().addr) == 16
    ex = Exchanger(
        _Backend(None, set()), MoverConfig(batch_pages=4, scan_pages=64), _Clock()
    )
    demote = ex._find({2: cold}, False, [0], 64, want=8)
    assert not np.isin(demote.addr[:8], warm).any()


def test_the_node_of_a_page_seen_or_moved_is_not_asked_again_while_fresh() -> None:
    be = _Backend(None, set())
    cfg = MoverConfig(
        batch_pages=64, scan_pages=64, cooldown_epochs=0, placement_ttl_epochs=3
    )
    ex = Exchanger(be, cfg, _Clock())
    tables = _tables()
    assert ex.run(tables, [0], [1], 0, 1, 64) == (64, 0)  # asked, then moved
    asked = ex.stats.scanned
    for _ in range(2):  # the cache knows they are on node 0 now
        assert ex.run(tables, [0], [1], 0, 1, 64) == (0, 0)
    assert ex.stats.scanned == asked
    assert ex.stats.scan_cached >= 128
    ex.forget_placement()  # e.g. an unplug: ask again (this backend says node 1)
    assert ex.run(tables, [0], [1], 0, 1, 64) == (64, 0)
    assert ex.stats.scanned > asked


def _unit(n: float, trust: float | None = None) -> Candidates:
    """One candidate of ``n`` samples (density per sample 1)."""
    return Candidates(
        np.ones(1, np.int32),
        np.zeros(1, np.uint64),
        np.array([n]),
        np.array([np.sqrt(n + 1.0)]),
        None if trust is None else np.array([trust]),
    )


def test_a_page_whose_own_count_is_trusted_passes_on_fewer_samples() -> None:
    """6 samples against a partner's 1: noise where pages differ only by chance
    (trust 0: z stays 2), evidence where its range's pages are overdispersed
    (trust 1: z falls to ``own_count_z``)."""
    cold = _unit(1.0)
    untrusted, trusted = _unit(6.0, 0.0), _unit(6.0, 1.0)
    assert not clearly_denser(untrusted, cold, 0.25, pair_z(untrusted, 2.0, 1.0))[0]
    assert clearly_denser(trusted, cold, 0.25, pair_z(trusted, 2.0, 1.0))[0]
    # without a z_own or a trust, the test is the plain z = 2 one
    assert pair_z(trusted, 2.0, None) == 2.0
    assert pair_z(_unit(3.0), 2.0, 1.0) == 2.0


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20), st.floats(0.0, 2.0))
def test_pair_z_lies_between_the_plain_and_the_own_count_z(
    trust: list[float], z_own: float
) -> None:
    t = np.array(trust)
    hot = Candidates(
        np.ones(len(t), np.int32),
        np.zeros(len(t), np.uint64),
        np.ones(len(t)),
        np.ones(len(t)),
        t,
    )
    z = np.asarray(pair_z(hot, 2.0, z_own))
    assert np.all(z <= 2.0 + 1e-12)
    assert np.all(z >= z_own - 1e-12)
    # trust survives picking and joining
    assert np.array_equal(hot.pick(slice(0, 1)).trust, t[:1])  # type: ignore[arg-type]
    joined = hot.then(_unit(1.0))
    assert joined.trust is not None
    assert joined.trust[-1] == 0.0


def test_trusted_page_counts_add_their_noise_in_variance() -> None:
    """21 samples against a page's 8 (same unit, z 1.58): the two Poisson
    noises add in variance where the hot page's range is overdispersed
    (trust 1); a unit whose estimate may drift keeps the cold side's upper
    bound plus z (trust 0); equal counts never pass either way."""
    cold = _unit(8.0)
    z = 1.58
    assert clearly_denser(_unit(21.0, 1.0), cold, 0.25, z)[0]
    assert not clearly_denser(_unit(21.0, 0.0), cold, 0.25, z)[0]
    assert not clearly_denser(_unit(21.0), cold, 0.25, z)[0]
    assert not clearly_denser(_unit(10.0, 1.0), cold, 0.25, z)[0]
    # trust moves the margin monotonically between the two tests
    passes = [
        bool(clearly_denser(_unit(21.0, t), cold, 0.25, z)[0])
        for t in np.linspace(0.0, 1.0, 11)
    ]
    assert passes == sorted(passes)
