"""agent_guest.policy: the guest's fast-tier budget (a pure function) and the
growth watch that decides when the mover keeps its fast reserve."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent_guest.backend import PAGE_SIZE, NumaNode, Tier
from agent_guest.config import MoverConfig, SamplerConfig
from agent_guest.policy import (
    RESIDENCY_OPEN_BYTES,
    AccessRate,
    FastBudget,
    FastLimit,
    FastResidency,
    GrowthWatch,
    SampleBoost,
    fast_budget,
)

MiB = 1 << 20
NO_RESERVE = MoverConfig(fast_reserve_bytes=0, fast_reserve_pct=0.0)


def _node(total_mib: int, used_mib: int, node: int = 0) -> NumaNode:
    return NumaNode(
        node, Tier.FAST, total_mib * MiB, (total_mib - used_mib) * MiB, True
    )


def _budget(
    nodes: list[NumaNode],
    allot: int | None,
    managed: int,
    mover: MoverConfig = NO_RESERVE,
    keep_reserve: bool = True,
) -> FastBudget:
    """The budget with the limit a fresh FastLimit gives (no plugged size)."""
    total = sum(n.total_bytes for n in nodes)
    limit = FastLimit().limit(total, allot, None)
    return fast_budget(nodes, limit, managed, mover, keep_reserve)


def test_without_an_allotment_the_limit_is_the_fast_nodes() -> None:
    b = _budget([_node(100, 40), _node(28, 0, 1)], None, 40 * MiB)
    assert (b.limit_bytes, b.used_bytes, b.unmanaged_bytes) == (128 * MiB, 40 * MiB, 0)
    assert b.room_bytes == 128 * MiB
    assert b.free_pages == 88 * MiB // PAGE_SIZE


def test_a_smaller_allotment_is_the_limit_a_larger_one_is_not() -> None:
    small = _budget([_node(100, 10)], 64 * MiB, 10 * MiB)
    large = _budget([_node(100, 10)], 256 * MiB, 10 * MiB)
    assert (small.limit_bytes, large.limit_bytes) == (64 * MiB, 100 * MiB)


def test_the_reserve_is_kept_only_once_there_is_history() -> None:
    mover = MoverConfig(fast_reserve_bytes=0, fast_reserve_pct=2.0)
    early = _budget([_node(100, 0)], None, 0, mover, keep_reserve=False)
    later = _budget([_node(100, 0)], None, 0, mover, keep_reserve=True)
    assert early.limit_bytes == 100 * MiB
    assert later.limit_bytes == 100 * MiB - mover.reserve_bytes(100 * MiB)


def test_the_reserve_is_the_larger_of_bytes_and_share() -> None:
    mover = MoverConfig(fast_reserve_bytes=8 * MiB, fast_reserve_pct=2.0)
    b = _budget([_node(100, 0)], None, 0, mover, keep_reserve=True)
    assert b.limit_bytes == 92 * MiB


def test_memory_the_targets_do_not_hold_is_not_room_for_them() -> None:
    b = _budget([_node(100, 60)], 80 * MiB, 20 * MiB)
    assert b.unmanaged_bytes == 40 * MiB
    assert b.room_bytes == 40 * MiB


def test_free_memory_the_kernel_keeps_is_neither_room_nor_free() -> None:
    # 100 MiB node, 40 used, 3 of the 60 free below the zones' watermarks
    node = NumaNode(0, Tier.FAST, 100 * MiB, 60 * MiB, True, reserved_bytes=3 * MiB)
    b = _budget([node], None, 40 * MiB)
    assert b.kernel_bytes == 3 * MiB
    assert b.free_pages == 57 * MiB // PAGE_SIZE
    assert b.room_bytes == 97 * MiB
    # what the guest reports as used stays what the node holds
    assert b.used_bytes == 40 * MiB
    # free memory below the reserve (page cache grew into it) is no room, and
    # no reason to demote either: the limit is not exceeded
    low = NumaNode(0, Tier.FAST, 100 * MiB, 2 * MiB, True, reserved_bytes=3 * MiB)
    assert _budget([low], None, 40 * MiB).free_pages == 0
    assert _budget([low], 90 * MiB, 40 * MiB).free_pages == -8 * MiB // PAGE_SIZE


def test_page_cache_is_room_unless_configured_not_to_be() -> None:
    # 100 MiB node: 40 MiB of the targets, 20 of page cache, 10 of others, 30 free
    node = NumaNode(0, Tier.FAST, 100 * MiB, 30 * MiB, True, reclaimable_bytes=20 * MiB)
    b = _budget([node], None, 40 * MiB)
    assert (b.unmanaged_bytes, b.reclaim_bytes) == (30 * MiB, 20 * MiB)
    assert b.free_pages == 50 * MiB // PAGE_SIZE
    assert b.room_bytes == 90 * MiB
    keep_cache = MoverConfig(fast_reserve_pct=0.0, reclaim_file_pages=False)
    b = _budget([node], None, 40 * MiB, keep_cache)
    assert (b.reclaim_bytes, b.free_pages) == (0, 30 * MiB // PAGE_SIZE)
    assert b.room_bytes == 70 * MiB


def test_a_shrunk_allotment_makes_free_pages_negative() -> None:
    b = _budget([_node(100, 90)], 50 * MiB, 90 * MiB)
    assert b.free_pages == -40 * MiB // PAGE_SIZE
    assert b.room_bytes == 50 * MiB


def test_boot_memory_beside_the_device_counts_once_the_device_settled() -> None:
    # Node 0: 186 MiB the guest sees of its boot memory + 256 MiB plugged.
    lim = FastLimit()
    assert lim.limit(442 * MiB, 256 * MiB, 256 * MiB) == 442 * MiB
    assert lim.fixed_bytes is None  # one look: the total may still be moving
    assert lim.limit(442 * MiB, 256 * MiB, 256 * MiB) == 442 * MiB
    assert lim.fixed_bytes == 186 * MiB
    # The host shrinks the allotment to 160 MiB; the unplug has not started.
    assert lim.limit(442 * MiB, 160 * MiB, 256 * MiB) == 346 * MiB
    # Half-way through the unplug (the host's plugged size lags): no change.
    assert lim.limit(394 * MiB, 160 * MiB, 256 * MiB) == 346 * MiB
    # A grow is no room until the memory is there.
    assert lim.limit(346 * MiB, 512 * MiB, 160 * MiB) == 346 * MiB


def test_a_node_smaller_than_the_plugged_device_teaches_nothing() -> None:
    # A grow: the host plugged 512 MiB, the guest has not onlined it yet.
    lim = FastLimit()
    lim.limit(316 * MiB, 256 * MiB, 256 * MiB)
    lim.limit(316 * MiB, 256 * MiB, 256 * MiB)
    assert lim.fixed_bytes == 60 * MiB
    lim.limit(316 * MiB, 512 * MiB, 512 * MiB)
    assert lim.limit(316 * MiB, 512 * MiB, 512 * MiB) == 316 * MiB
    assert lim.fixed_bytes == 60 * MiB
    lim.limit(572 * MiB, 512 * MiB, 512 * MiB)
    assert lim.limit(572 * MiB, 512 * MiB, 512 * MiB) == 572 * MiB
    assert lim.fixed_bytes == 60 * MiB


def test_a_plugged_size_older_than_the_allotment_teaches_nothing() -> None:
    # Allotted 256 -> 512 -> 256 MiB before the host read the grow: the
    # guest's plugged size (256) predates both allotments.
    lim = FastLimit()
    for _ in range(2):
        lim.limit(316 * MiB, 256 * MiB, 256 * MiB, True)
    assert lim.fixed_bytes == 60 * MiB
    lim.limit(316 * MiB, 512 * MiB, 256 * MiB, False)
    lim.limit(572 * MiB, 512 * MiB, 256 * MiB, False)
    for _ in range(3):
        assert lim.limit(572 * MiB, 256 * MiB, 256 * MiB, False) == 316 * MiB
    assert lim.fixed_bytes == 60 * MiB
    assert lim.limit(572 * MiB, 68 * MiB, 256 * MiB, False) == 128 * MiB


def test_without_a_settled_device_the_plugged_size_still_counts() -> None:
    lim = FastLimit()
    lim.limit(400 * MiB, 100 * MiB, 200 * MiB)
    assert lim.limit(400 * MiB, 100 * MiB, 200 * MiB) == 300 * MiB
    assert lim.fixed_bytes is None


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 1 << 40),
            st.one_of(st.none(), st.integers(0, 1 << 40)),
            st.one_of(st.none(), st.integers(0, 1 << 40)),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_limit_never_exceeds_the_nodes_or_fixed_part_plus_allotment(
    steps: list[tuple[int, int | None, int | None]],
) -> None:
    lim = FastLimit()
    for total, allot, plugged in steps:
        got = lim.limit(total, allot, plugged)
        assert 0 <= got <= total
        if allot is not None and lim.fixed_bytes is not None:
            assert got <= lim.fixed_bytes + allot
        if allot is not None and plugged is None and lim.fixed_bytes is None:
            assert got == min(total, allot)  # a host that sends no plugged size


@given(
    total=st.integers(0, 1 << 40),
    used_share=st.floats(0, 1),
    limit=st.integers(0, 1 << 41),
    managed=st.integers(0, 1 << 41),
    pct=st.floats(0, 50),
    keep=st.booleans(),
    kept_share=st.floats(0, 1),
    cache_share=st.floats(0, 1),
)
def test_room_fits_in_the_limit(
    total: int,
    used_share: float,
    kept_share: float,
    cache_share: float,
    limit: int,
    managed: int,
    pct: float,
    keep: bool,
) -> None:
    used = int(total * used_share)
    kept = int((total - used) * kept_share)
    cache = int(used * cache_share)
    node = NumaNode(0, Tier.FAST, total, total - used, True, kept, cache)
    b = fast_budget([node], limit, managed, MoverConfig(fast_reserve_pct=pct), keep)
    assert 0 <= b.room_bytes <= b.limit_bytes <= limit
    assert 0 <= b.unmanaged_bytes <= used
    # only page cache the managed processes do not hold is taken for room
    assert 0 <= b.reclaim_bytes <= min(cache, b.unmanaged_bytes)
    # within the node's size (FastLimit's limits are), the exchange never
    # counts on free memory the kernel keeps
    if limit <= total:
        assert b.free_pages * PAGE_SIZE <= total - used + b.reclaim_bytes - kept


def test_a_process_seen_first_is_not_growing() -> None:
    w = GrowthWatch(hold_s=1.0)
    w.note({1: 0}, 0.0)
    w.note({1: 0, 2: 512 * MiB}, 1.0)  # a new, large process
    assert not w.growing(1.0)


def test_growth_keeps_the_reserve_for_the_hold_then_it_lapses() -> None:
    w = GrowthWatch(hold_s=1.0)
    w.note({1: 100 * MiB}, 0.0)
    w.note({1: 101 * MiB}, 0.5)  # +1 %: growing
    assert w.growing(0.5)
    assert w.growing(1.49)
    assert not w.growing(1.5)
    w.note({1: 101 * MiB}, 2.0)  # flat: still not growing
    assert not w.growing(2.0)


def test_small_or_negative_changes_are_not_growth() -> None:
    w = GrowthWatch(hold_s=1.0)
    w.note({1: 200 * MiB, 2: 200 * MiB}, 0.0)
    w.note({1: 201 * MiB, 2: 199 * MiB}, 0.5)  # churn, no net growth
    w.note({1: 201 * MiB + MiB // 2, 2: 199 * MiB}, 1.0)  # +0.125 %
    w.note({2: 100 * MiB}, 1.5)  # one exits, the other shrinks
    assert not w.growing(1.5)


@given(
    steps=st.lists(
        st.dictionaries(st.integers(1, 4), st.integers(0, 1 << 40), max_size=4),
        min_size=1,
        max_size=8,
    )
)
def test_growth_is_a_net_rise_among_processes_seen_twice(
    steps: list[dict[int, int]],
) -> None:
    w = GrowthWatch(hold_s=0.5)
    prev: dict[int, int] = {}
    for t, rss in enumerate(steps):
        w.note(rss, float(t))
        common = rss.keys() & prev.keys()
        before = sum(prev[p] for p in common)
        after = sum(rss[p] for p in common)
        assert w.growing(float(t)) == (after - before > before // 200)
        prev = rss


def test_sampling_is_boosted_for_some_epochs_after_each_promoting_round() -> None:
    boost = SampleBoost(
        SamplerConfig(rate_hz=1000, boost_rate_hz=4000, boost_epochs=2, settle_epochs=0)
    )
    rates = [boost.after_round(n) for n in (0, 5, 0, 0, 0, 7, 0, 3, 0, 0, 0)]
    assert rates == [1000, 4000, 4000, 1000, 1000, 4000, 4000, 4000, 4000, 1000, 1000]


def test_boost_rate_zero_switches_boosting_off() -> None:
    boost = SampleBoost(SamplerConfig(rate_hz=1000, boost_rate_hz=0))
    assert {boost.after_round(n) for n in (5, 0, 9)} == {1000.0}


def test_the_boost_goes_on_while_waiting_moves_are_worth_more_than_it_spent() -> None:
    """BFS at 1/8: hundreds of resolved pages waited on samples from ~2.4 s
    on, after the boost had ended; at the base rate they never resolved."""
    boost = SampleBoost(
        SamplerConfig(rate_hz=1000, boost_rate_hz=4000, boost_epochs=2, settle_epochs=0)
    )
    cpu_s = 4000 * 250e-9  # a window of 4,000 samples at 250 ns each
    assert boost.after_round(5) == 4000
    rates = []
    for _ in range(4):
        boost.sampled(4000, cpu_s, 1.0)  # 3,000 beyond the base rate: 0.75 ms
        rates.append(boost.after_round(0, pending=10, pending_ns=2e6))
    # the boost's second epoch, then on while 2 ms > what it spent (1.5 ms),
    # off once it spent more (2.25 ms)
    assert rates == [4000, 4000, 1000, 1000]
    # samples at the base rate cost nothing extra: the boost starts again
    # once the waiting moves are worth more than it spent
    boost.sampled(1000, 1000 * 250e-9, 1.0)
    assert boost.after_round(0, pending=10, pending_ns=2e6) == 1000
    assert boost.after_round(0, pending=10, pending_ns=4e6) == 4000
    # a promoting round starts the count afresh
    boost.after_round(1)
    boost.after_round(0)
    assert boost.after_round(0, pending=10, pending_ns=1.0) == 4000
    # no candidate waiting, no boost whatever the figure
    assert boost.after_round(0, pending=0, pending_ns=1e9) == 1000


@given(
    rounds=st.lists(st.integers(0, 3), max_size=30),
    epochs=st.integers(0, 5),
)
def test_the_boost_holds_exactly_boost_epochs_after_the_last_promotion(
    rounds: list[int], epochs: int
) -> None:
    cfg = SamplerConfig(
        rate_hz=1000, boost_rate_hz=4000, boost_epochs=epochs, settle_epochs=0
    )
    boost = SampleBoost(cfg)
    last = -(10**6)
    for i, n in enumerate(rounds):
        if n:
            last = i
        rate = boost.after_round(n)
        assert rate == (4000.0 if epochs and i - last < epochs else 1000.0)


def _settling(settle_epochs: int = 3) -> SampleBoost:
    return SampleBoost(
        SamplerConfig(
            rate_hz=1000,
            boost_rate_hz=4000,
            boost_epochs=2,
            settled_rate_hz=100,
            settle_epochs=settle_epochs,
        )
    )


def test_sampling_settles_after_quiet_rounds_and_a_move_ends_it() -> None:
    boost = _settling()
    rates = [boost.after_round(0, m) for m in (0, 0, 0, 0, 9, 0, 0, 0)]
    assert rates == [1000, 1000, 100, 100, 1000, 1000, 1000, 100]


def test_a_promoting_round_boosts_a_settled_sampler() -> None:
    boost = _settling(settle_epochs=1)
    assert [boost.after_round(p) for p in (0, 5, 0, 0)] == [100, 4000, 4000, 100]


def test_the_settled_rate_is_at_most_the_base_rate() -> None:
    boost = SampleBoost(SamplerConfig(rate_hz=50, settled_rate_hz=250, settle_epochs=1))
    assert boost.after_round(0) == 50


def test_candidates_that_would_not_pay_neither_settle_nor_unsettle() -> None:
    """XSBench at 1/8: a resolved page whose move would not pay even at its
    estimate waited from 3.8 s on and held the settled sampler at the base
    rate to the end; at start, such a page must not let a sampler that has
    not moved anything yet settle either (B-tree at 1/4: settled before its
    first round, at 250 samples a second nothing passed the noise test)."""
    boost = SampleBoost(SamplerConfig(settled_rate_hz=100, settle_epochs=3))
    rates = [boost.after_round(0, 0) for _ in range(3)]
    assert rates == [4000, 4000, 100]
    # settled: deferred candidates leave it settled; a paying one ends it
    rates = [boost.after_round(0, 0, pending=0, deferred=d) for d in (2, 2, 2)]
    assert rates == [100, 100, 100]
    assert boost.after_round(0, 0, pending=1, deferred=2) == 4000
    # not settled: rounds with deferred candidates do not count as quiet
    rates = [boost.after_round(0, 0, deferred=1) for _ in range(5)]
    assert rates == [4000] * 5
    rates = [boost.after_round(0, 0) for _ in range(3)]
    assert rates == [4000, 4000, 100]


def test_promotion_candidates_waiting_on_samples_keep_the_sampler_unsettled() -> None:
    boost = _settling()
    rates = [boost.after_round(0, 0, pending=p) for p in (0, 0, 5, 0, 0, 0)]
    assert rates == [1000, 1000, 1000, 1000, 1000, 100]


@given(
    rounds=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=40),
    k=st.integers(0, 6),
    share=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
    per_epoch=st.sampled_from([0, 4, 40, 400]),
)
def test_a_steady_sample_share_settles_exactly_k_rounds_after_the_last_busy_one(
    rounds: list[tuple[int, int]], k: int, share: float, per_epoch: int
) -> None:
    """Busy: pages moved, or promotion candidates left waiting."""
    cfg = SamplerConfig(
        rate_hz=1000, boost_rate_hz=0, settled_rate_hz=100, settle_epochs=k
    )
    boost = SampleBoost(cfg)
    last = -1
    for i, (moved, pending) in enumerate(rounds):
        if moved or pending:
            last = i
        rate = boost.after_round(0, moved, share * per_epoch, per_epoch, pending)
        assert rate == (100.0 if k and i - last >= k else 1000.0)


@given(
    share=st.sampled_from([0.5, 0.7, 0.9, 1.0]),
    per_epoch=st.sampled_from([10, 40, 400]),
    quiet=st.integers(25, 60),
)
def test_a_fall_of_the_hot_share_ends_the_settled_state_within_a_few_epochs(
    share: float, per_epoch: int, quiet: int
) -> None:
    boost = _settling(settle_epochs=20)
    for _ in range(quiet):
        rate = boost.after_round(0, 0, share * per_epoch, per_epoch)
    assert rate == 100
    rates = [boost.after_round(0, 0, 0.0, per_epoch) for _ in range(6)]
    assert 1000 in rates


@given(
    rate=st.floats(1e3, 1e9),
    periods=st.lists(st.integers(1, 100_000), min_size=1, max_size=20),
)
def test_the_access_rate_holds_while_the_period_changes(
    rate: float, periods: list[int]
) -> None:
    """A steady access rate sampled at whatever periods reads as that rate:
    each epoch's samples count at the period they were taken at."""
    r = AccessRate(per_s=rate)
    err = 0.0
    for period in periods:
        r.note(round(rate * 0.01 / period), period, 0.01)
        err = max(err, 0.5 * period / 0.01)  # rounding to whole samples
        assert abs(r.per_s - rate) <= err + 1e-9 * rate


def test_a_sample_is_worth_the_rate_over_the_decayed_counts() -> None:
    r = AccessRate()
    assert r.per_count(100.0) == 0.0
    r.note(40, 1000, 0.01)  # 4 M accesses/s, one smoothing step
    assert r.per_count(0.0) == 0.0
    assert r.per_count(80.0) == 0.3 * 4e6 / 80.0


def test_a_source_whose_samples_are_events_never_settles() -> None:
    cfg = SamplerConfig(
        rate_hz=1000, boost_rate_hz=0, settled_rate_hz=100, settle_epochs=2
    )
    events = SampleBoost(cfg, can_settle=False)
    draws = SampleBoost(cfg)
    assert [events.after_round(0) for _ in range(6)] == [1000.0] * 6
    assert [draws.after_round(0) for _ in range(4)] == [1000, 100, 100, 100]


def test_residency_is_the_rss_until_measured_then_follows_moves() -> None:
    r = FastResidency(min_interval_s=10.0, cpu_share=0.001)
    assert r.due(0.0)
    assert r.fast_bytes(100 * MiB) == 100 * MiB
    r.measured(40 * MiB, 100 * MiB, cost_s=0.001, now=0.0)
    assert not r.due(9.9)
    assert r.due(10.0)
    r.moved(promoted_pages=0, demoted_pages=10 * MiB // PAGE_SIZE)
    assert r.fast_bytes(100 * MiB) == 30 * MiB
    assert r.fast_bytes(104 * MiB) == 34 * MiB  # growth: first touch, fast
    r.invalidate()  # pages moved: again once the CPU share allows (1 ms / 0.1 %)
    assert not r.due(0.99)
    assert r.due(1.0)
    r.invalidate(at_once=True)  # an unplug ended: at once
    assert r.due(0.0)


def test_a_costly_measurement_is_taken_less_often() -> None:
    r = FastResidency(min_interval_s=10.0, cpu_share=0.001)
    r.measured(0, 0, cost_s=0.1, now=5.0)  # 100 ms: once per 100 s at most
    r.invalidate()
    assert not r.due(104.9)
    assert r.due(105.0)


@given(
    fast=st.integers(0, 1 << 36),
    rss=st.integers(0, 1 << 36),
    now_rss=st.integers(0, 1 << 36),
    moves=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 20))),
)
def test_the_residency_estimate_lies_within_the_resident_set(
    fast: int, rss: int, now_rss: int, moves: list[tuple[int, int]]
) -> None:
    r = FastResidency(min_interval_s=1.0)
    r.measured(min(fast, rss), rss, 0.0, 0.0)
    for promoted, demoted in moves:
        r.moved(promoted, demoted)
        assert 0 <= r.fast_bytes(now_rss) <= now_rss


def test_memory_off_the_fast_nodes_is_not_the_targets_room() -> None:
    """A target half on the slow node: the fast node's other 60 MiB are not its."""
    node = _node(100, 80)
    by_rss = fast_budget([node], 100 * MiB, 40 * MiB, NO_RESERVE, False)
    by_node = fast_budget([node], 100 * MiB, 20 * MiB, NO_RESERVE, False)
    assert (by_rss.unmanaged_bytes, by_node.unmanaged_bytes) == (40 * MiB, 60 * MiB)
    assert by_node.room_bytes == 40 * MiB


def test_an_unplug_in_flight_does_not_read_offlined_pages_as_other_memory() -> None:
    """While the node still exceeds the limit (an unplug offlining its blocks,
    their free pages counted as used), the memory the targets do not hold is
    at most what it was before; once the node has shrunk it counts again."""
    r = FastResidency(min_interval_s=10.0)
    r.measured(40 * MiB, 40 * MiB, 0.0, 0.0)
    before = r.budget([_node(300, 80)], 300 * MiB, 40 * MiB, NO_RESERVE, False, True)
    assert before.unmanaged_bytes == 40 * MiB
    # allotment cut: limit 100 MiB, node still 300 MiB with 150 MiB read as used
    during = r.budget([_node(300, 230)], 100 * MiB, 40 * MiB, NO_RESERVE, False, True)
    assert (during.unmanaged_bytes, during.used_bytes) == (40 * MiB, 80 * MiB)
    assert during.room_bytes == 60 * MiB
    assert during.free_pages == 20 * MiB // PAGE_SIZE  # nothing to demote
    # the targets' own pages over the limit are still demoted before the unplug
    over = r.budget([_node(300, 170)], 100 * MiB, 130 * MiB, NO_RESERVE, False, True)
    assert over.free_pages == -70 * MiB // PAGE_SIZE
    after = r.budget([_node(100, 90)], 100 * MiB, 40 * MiB, NO_RESERVE, False, True)
    assert after.unmanaged_bytes == 50 * MiB
    # without a fixed part known the limit may stay below the node for good
    legacy = r.budget([_node(300, 230)], 100 * MiB, 40 * MiB, NO_RESERVE, False, False)
    assert legacy.unmanaged_bytes == 190 * MiB


@given(
    managed_fast=st.integers(0, 1 << 32),
    managed_slow=st.integers(0, 1 << 32),
    other_fast=st.integers(0, 1 << 32),
    other_slow=st.integers(0, 1 << 32),
)
def test_where_the_rss_leaves_nothing_open_it_gives_the_other_memory(
    managed_fast: int, managed_slow: int, other_fast: int, other_slow: int
) -> None:
    """Not open: the RSS alone tells the memory on the fast nodes that is not
    the targets' to within RESIDENCY_OPEN_BYTES, so no measurement is needed."""
    rss = managed_fast + managed_slow
    used_fast = managed_fast + other_fast
    used_all = used_fast + managed_slow + other_slow
    if not FastResidency.is_open(rss, used_fast, used_all):
        by_rss = max(0, used_fast - rss)
        assert abs(by_rss - other_fast) <= RESIDENCY_OPEN_BYTES


def test_a_process_alone_on_its_nodes_is_never_measured() -> None:
    assert not FastResidency.is_open(300 * MiB, 100 * MiB, 300 * MiB)
    assert FastResidency.is_open(300 * MiB, 100 * MiB, 340 * MiB)
