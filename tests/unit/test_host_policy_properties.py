"""Properties of the host's fast-tier allocation (docs/host.md, "Guarantees").

Random VM sets (sizes, classes, reservations, limits, demands, starting
allotments) go through :func:`agent_host.policy.plan` tick after tick, with the
guests complying at once (``current`` follows ``requested``), as the daemon
would drive them. Each property is the one docs/host.md states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from agent_host.backend import HostNode, Tier
from agent_host.config import Config, HostConfig, PolicyConfig
from agent_host.policy import (
    PolicyInputs,
    PolicyResult,
    TierInputs,
    fair_split,
    host_capacity,
    plan,
)

MiB = 1 << 20
BLOCK = 2 * MiB
SLOW_LIMIT = 1 << 40  # the slow tier can always hold what the fast tier gives up
CFG = PolicyConfig(min_resize_interval_s=0.0, safety_margin_bytes=8 * MiB)
# Rounds of plan() within which allotments reach their targets when nothing
# changes: shrinks, then growth into the freed memory, then the small shrinks a
# waiting VM releases, then growth into those (docs/host.md, "Convergence").
ROUNDS = 6


@dataclass(frozen=True)
class Host:
    weight: np.ndarray  # type: ignore[type-arg]
    res: np.ndarray  # type: ignore[type-arg]
    limit: np.ndarray  # type: ignore[type-arg]
    start: np.ndarray  # type: ignore[type-arg]
    hot: np.ndarray  # type: ignore[type-arg]  # NaN: no report
    used: np.ndarray  # type: ignore[type-arg]
    capacity: int

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])


@st.composite
def hosts(draw: st.DrawFn, min_vms: int = 1, reports: bool = True) -> Host:
    n = draw(st.integers(min_vms, 10))
    blocks = st.integers(0, 512)
    weight = np.array(draw(st.lists(st.sampled_from([1.0, 2.0, 4.0, 0.5, 3.0]),
                                    min_size=n, max_size=n)))  # fmt: skip
    limit = np.array(draw(st.lists(st.integers(8, 512), min_size=n, max_size=n)))
    res = np.array([draw(st.integers(0, int(lim) // 4)) for lim in limit])
    start = np.array(
        [draw(st.integers(int(r), int(lim))) for r, lim in zip(res, limit, strict=True)]
    )
    hot = np.array(
        [draw(st.integers(0, 600)) * BLOCK for _ in range(n)], dtype=np.float64
    )
    if not reports:
        hot[:] = np.nan
    cap_blocks = draw(st.integers(int(res.sum()), int(limit.sum()) + 64))
    # Start within the capacity (the daemon never plugs more than there is).
    total = int(start.sum())
    if total > cap_blocks:
        start = np.maximum(res, start * cap_blocks // max(total, 1))
    assume(int(start.sum()) <= cap_blocks)
    del blocks
    hot_b = hot
    # Honest usage: the hot set plus 64 MiB of colder memory.
    used = np.where(np.isnan(hot_b), np.nan, hot_b + 64 * MiB)
    return Host(
        weight=weight,
        res=res * BLOCK,
        limit=limit * BLOCK,
        start=start * BLOCK,
        hot=hot_b,
        used=used,
        capacity=cap_blocks * BLOCK,
    )


def _tier(req: np.ndarray, res: np.ndarray, limit: np.ndarray) -> TierInputs:  # type: ignore[type-arg]
    n = req.shape[0]
    return TierInputs(
        requested=req.astype(np.int64),
        current=req.astype(np.int64),
        reservation=res.astype(np.int64),
        limit=limit.astype(np.int64),
        block=np.full(n, BLOCK, np.int64),
        last_resize_s=np.full(n, -math.inf),
    )


def _inputs(
    h: Host,
    fast: np.ndarray,  # type: ignore[type-arg]
    hot: np.ndarray | None = None,  # type: ignore[type-arg]
    used: np.ndarray | None = None,  # type: ignore[type-arg]
    true_used: np.ndarray | None = None,  # type: ignore[type-arg]
) -> PolicyInputs:
    """``hot``/``used`` are what the guests claim; ``true_used`` what they use
    (plugged memory follows it, whatever they claim)."""
    hot = h.hot if hot is None else hot
    used = h.used if used is None else used
    real = used if true_used is None else true_used
    # The slow tier holds the rest of what the guest really uses.
    slow = np.where(np.isnan(real), 0.0, np.maximum(real - fast, 0.0))
    slow = np.ceil(slow / BLOCK) * BLOCK + 64 * MiB
    return PolicyInputs(
        now_s=0.0,
        weight=h.weight.astype(np.float64),
        hot_bytes=hot.astype(np.float64),
        used_bytes=used.astype(np.float64),
        fast=_tier(fast, h.res, h.limit),
        slow=_tier(slow, np.zeros(h.n), np.full(h.n, SLOW_LIMIT)),
        fast_capacity_bytes=h.capacity,
        slow_capacity_bytes=1 << 50,
    )


def _run(
    h: Host,
    rounds: int = ROUNDS,
    hot: np.ndarray | None = None,  # type: ignore[type-arg]
    used: np.ndarray | None = None,  # type: ignore[type-arg]
    cfg: PolicyConfig = CFG,
    true_used: np.ndarray | None = None,  # type: ignore[type-arg]
) -> tuple[np.ndarray, PolicyResult, list[np.ndarray]]:  # type: ignore[type-arg]
    """Tick ``rounds`` times with guests that comply at once; the allotments
    after each round, the last result."""
    fast = h.start.astype(np.int64)
    history = []
    result = None
    for _ in range(rounds):
        result = plan(_inputs(h, fast, hot, used, true_used), cfg)
        fast = result.fast.target
        history.append(fast)
    assert result is not None
    return fast, result, history


def _demand(h: Host, hot: np.ndarray | None = None) -> np.ndarray:  # type: ignore[type-arg]
    hot = h.hot if hot is None else hot
    return np.asarray(hot * (1.0 + CFG.hot_headroom_ratio))


@settings(max_examples=300, deadline=None)
@given(
    lo=st.lists(st.floats(0, 1e3), min_size=1, max_size=20),
    extra=st.lists(st.floats(0, 1e3), min_size=20, max_size=20),
    w=st.lists(st.floats(0.1, 10), min_size=20, max_size=20),
    frac=st.floats(0, 1.2),
)
def test_fair_split_is_weighted_max_min_fair(
    lo: list[float], extra: list[float], w: list[float], frac: float
) -> None:
    n = len(lo)
    a = np.array(lo)
    b = a + np.array(extra[:n])
    weight = np.array(w[:n])
    cap = float(a.sum() + frac * (b.sum() - a.sum()))
    x = fair_split(a, b, weight, cap)
    tol = 1e-6 * max(1.0, float(b.sum()))
    assert (x >= a - tol).all()
    assert (x <= b + tol).all()
    assert float(x.sum()) <= max(cap, float(a.sum())) + tol
    if a.sum() <= cap <= b.sum():
        assert abs(float(x.sum()) - cap) <= tol
    # Max-min: a VM with less per weight than another is at its ceiling, or
    # the other is at its floor (nothing could move from the richer to it).
    level = x / weight
    poor = level[:, None] < level[None, :] - 1e-6
    stuck = (x[:, None] >= b[:, None] - tol) | (x[None, :] <= a[None, :] + tol)
    assert not (poor & ~stuck).any()


@settings(max_examples=200, deadline=None)
@given(h=hosts())
def test_bounds_hold_every_round(h: Host) -> None:
    _, _, history = _run(h)
    for fast in history:
        assert (fast >= h.res).all()
        assert (fast <= h.limit).all()
        assert int(fast.sum()) <= h.capacity
        assert (fast % BLOCK == 0).all()


@settings(max_examples=200, deadline=None)
@given(h=hosts(min_vms=2))
def test_every_vm_demanding_more_than_its_share_gets_its_share(h: Host) -> None:
    _, first, _ = _run(h, rounds=1)
    share = first.fast.share
    # Everybody demands more than its share (and everything up to its limit).
    hot = (h.limit.astype(np.float64) + 64 * MiB) / (1.0 + CFG.hot_headroom_ratio)
    fast, _, _ = _run(h, hot=hot, used=hot + 64 * MiB)
    assert (np.abs(fast - share) <= BLOCK).all(), (fast - share) / MiB
    # The share itself is the class-weighted split of the capacity.
    assert int(share.sum()) <= h.capacity
    assert (share >= h.res).all()
    assert (share <= h.limit).all()


# Found by hypothesis: every want a fraction of a block above a whole block, so a
# split rounded down per VM left a block each unclaimed, and the VM that wanted
# nothing kept its 4 MiB while the others waited (now wants round up to a block).
_UNCLAIMED_BLOCKS = Host(
    weight=np.ones(10),
    res=np.array([2, 0, 0, 0, 0, 0, 0, 0, 0, 0]) * MiB,
    limit=np.array([16, 542, 666, 16, 16, 144, 18, 16, 16, 16]) * MiB,
    start=np.array([2, 0, 0, 0, 4, 0, 0, 0, 0, 0]) * MiB,
    hot=np.array([0, 476, 608, 14, 0, 94, 16, 14, 14, 14], np.float64) * MiB,
    used=np.array([64, 540, 672, 78, 64, 158, 80, 78, 78, 78], np.float64) * MiB,
    capacity=1374 * MiB,
)


@settings(max_examples=200, deadline=None)
@given(h=hosts(min_vms=2))
@example(h=_UNCLAIMED_BLOCKS)
def test_targets_are_the_fair_split_of_demands(h: Host) -> None:
    """From any starting allotment, within ROUNDS: a VM demanding less than it
    could get gets its demand, the rest is split by class weight; what nobody
    demands stays where it was, never beyond the capacity."""
    fast, result, history = _run(h)
    want = np.clip(_demand(h), result.fast.floor, h.limit)
    fair = fair_split(result.fast.floor.astype(float), want, h.weight, h.capacity)
    # The fair split to the block; above it only with memory nobody demands.
    assert (fast >= np.floor(fair / BLOCK) * BLOCK - BLOCK).all(), (fast - fair) / MiB
    if float(want.sum()) >= h.capacity:
        assert (fast <= np.ceil(fair / BLOCK) * BLOCK + BLOCK).all(), (
            fast - fair
        ) / MiB
    # Converged: one more round changes nothing.
    again = plan(_inputs(h, fast), CFG).fast.target
    assert (again == fast).all()
    del history


# Found by hypothesis: with the liar (VM 7) claiming more than it was given,
# the honest VMs, all demanding 0-2 MiB, ended 2-4 MiB below the honest run,
# and VM 1 14 MiB above it: memory none of them demands, which stays where the
# path of resizes left it. What they are entitled to was the same.
_SURPLUS_PATH = Host(
    weight=np.ones(10),
    res=np.array([0, 6, 0, 0, 0, 2, 4, 4, 4, 4]) * MiB,
    limit=np.array([16, 480, 16, 16, 16, 16, 16, 386, 16, 18]) * MiB,
    start=np.array([10, 480, 14, 16, 8, 16, 8, 10, 4, 18]) * MiB,
    hot=np.array([0, 0, 2, 0, 0, 0, 2, 0, 0, 0], np.float64) * MiB,
    used=np.array([64, 64, 66, 64, 64, 64, 66, 64, 64, 64], np.float64) * MiB,
    capacity=836 * MiB,
)


def _check_liar(h: Host, liar: int, claim_hot: float, claim_used: float) -> None:
    """Each honest VM ends within one block of what it gets, up to what it is
    entitled to (its demand, at least its floor), when the liar honestly
    demands its whole limit; the liar gets no more than the larger of its share
    and what the others' demands leave."""
    hot, used = h.hot.copy(), h.used.copy()
    hot[liar], used[liar] = claim_hot, claim_used
    lying, result, _ = _run(h, hot=hot, used=used, true_used=h.used)
    honest_hot = h.hot.copy()
    honest_hot[liar] = float(h.limit[liar]) * 2
    honest_used = h.used.copy()
    honest_used[liar] = honest_hot[liar] + 64 * MiB
    honest, _, _ = _run(h, hot=honest_hot, used=honest_used)
    others = np.arange(h.n) != liar
    want = np.clip(_demand(h), result.fast.floor, h.limit)
    due = np.minimum(honest, want)
    assert (np.minimum(lying, want)[others] >= due[others] - BLOCK).all(), (
        (lying - honest) / MiB,
        want / MiB,
    )
    left = h.capacity - float(np.minimum(want, lying)[others].sum())
    bound = max(float(result.fast.share[liar]), left)
    assert lying[liar] <= bound + BLOCK, (lying[liar] / MiB, bound / MiB)


@settings(max_examples=200, deadline=None)
@given(h=hosts(min_vms=2), data=st.data())
def test_a_lying_guest_gains_nothing_an_honest_one_could_not(
    h: Host, data: st.DataObject
) -> None:
    """One VM sends arbitrary valid reports (any hot set, any usage, up to the
    wire's bounds): :func:`_check_liar`."""
    liar = data.draw(st.integers(0, h.n - 1))
    big = float(1 << 50)
    claim_hot = data.draw(st.sampled_from([0.0, big, float(h.limit[liar]) * 3]))
    claim_used = data.draw(st.sampled_from([0.0, big, float(h.limit[liar]) * 3]))
    _check_liar(h, liar, claim_hot, claim_used)


def test_a_liar_does_not_move_what_honest_vms_are_due() -> None:
    claim = float(_SURPLUS_PATH.limit[7]) * 3
    _check_liar(_SURPLUS_PATH, 7, claim, claim)


@settings(max_examples=100, deadline=None)
@given(h=hosts(reports=False))
def test_silent_vms_keep_their_allotment_up_to_their_share(h: Host) -> None:
    fast, result, _ = _run(h, rounds=2)
    keep = np.maximum(h.res, np.minimum(h.start, result.fast.share))
    assert (fast >= keep).all()
    assert int(fast.sum()) <= h.capacity


def test_many_small_shrinks_make_room_for_one_grower() -> None:
    """1 gold + 100 bronze VMs of 4 GiB on 1 GiB each: each bronze VM demands
    20 MiB less (below its 32 MiB band), together they are 2 GiB of gold's
    growth, which hysteresis froze (0 resizes in 10 ticks) before."""
    n = 101
    gib = 1 << 30
    bronze_want = gib - 20 * MiB
    h = Host(
        weight=np.array([4.0] + [1.0] * (n - 1)),
        res=np.zeros(n, np.int64),
        limit=np.full(n, 4 * gib, np.int64),
        start=np.full(n, 1 * gib, np.int64),
        hot=np.array([5.0 * gib] + [bronze_want / 1.1] * (n - 1)),
        used=np.array([5.5 * gib] + [1.5 * gib] * (n - 1)),
        capacity=n * gib,
    )
    fast, _, history = _run(h, rounds=ROUNDS)
    # Gold's share (4/104 of the capacity, ~3.9 GiB) comes first; the bronze
    # VMs split the rest (each a little below its demand).
    fair = fair_split(np.zeros(n), np.minimum(_demand(h), h.limit), h.weight, n * gib)
    assert fast[0] >= 3 * gib
    assert (np.abs(fast - fair) <= BLOCK).all()
    assert int(fast.sum()) <= h.capacity
    assert history[0][0] == gib  # the first round shrinks; memory is not free yet


def test_claimed_usage_cannot_raise_a_floor_past_the_share() -> None:
    """A bronze VM with a small slow limit claims all it has as used and the
    whole of its memory as hot: the usage floor that protects it from OOM stops
    at its share, and the gold VMs get theirs."""
    gib = 1 << 30
    n = 3
    weight = np.array([1.0, 4.0, 4.0])
    fast = np.array([3 * gib, 1 * gib, 1 * gib], np.int64)
    slow = np.full(n, 256 * MiB, np.int64)
    inputs = PolicyInputs(
        now_s=0.0,
        weight=weight,
        hot_bytes=np.array([float(1 << 50), 4.0 * gib, 4.0 * gib]),
        used_bytes=np.array([float(1 << 50), 4.2 * gib, 4.2 * gib]),
        fast=_tier(fast, np.zeros(n), np.full(n, 4 * gib)),
        slow=replace(
            _tier(slow, np.zeros(n), np.full(n, 256 * MiB)),
            current=slow,
        ),
        fast_capacity_bytes=5 * gib,
        slow_capacity_bytes=1 << 40,
    )
    result = plan(inputs, CFG)
    share = result.fast.share
    assert share[0] == pytest.approx(5 * gib / 9, abs=BLOCK)
    assert result.fast.floor[0] <= share[0]
    for _ in range(ROUNDS):
        fast = result.fast.target
        t = replace(inputs.fast, requested=fast, current=fast)
        result = plan(replace(inputs, fast=t), CFG)
    assert (np.abs(result.fast.target - share) <= BLOCK).all()


@given(
    node_gib=st.lists(st.integers(0, 64), min_size=1, max_size=4),
    slow_gib=st.lists(st.integers(0, 64), max_size=2),
    reserved_gib=st.integers(0, 8),
    fast_cap_gib=st.integers(0, 80),
    share=st.floats(0.0, 1.0),
)
def test_the_tiers_never_count_the_same_memory_twice(
    node_gib: list[int],
    slow_gib: list[int],
    reserved_gib: int,
    fast_cap_gib: int,
    share: float,
) -> None:
    """With the slow tier emulated on the fast nodes, the two capacities
    together fit their memory less the host's reserve; with a slow node, the
    slow capacity is that node's memory."""
    nodes = [
        HostNode(i, Tier.FAST, g << 30, g << 30, True) for i, g in enumerate(node_gib)
    ]
    nodes += [
        HostNode(10 + i, Tier.SLOW, g << 30, g << 30, False)
        for i, g in enumerate(slow_gib)
    ]
    cfg = Config(
        host=HostConfig(
            fast_capacity_bytes=fast_cap_gib << 30, emulated_fast_share=share
        ),
        policy=PolicyConfig(host_reserved_bytes=reserved_gib << 30),
    )
    fast_cap, slow_cap, emulated = host_capacity(nodes, cfg)
    usable = max(0, sum(node_gib) - reserved_gib) << 30
    assert emulated == (sum(slow_gib) == 0)
    assert fast_cap >= 0
    assert slow_cap >= 0
    if emulated:
        assert fast_cap + slow_cap == usable
        if fast_cap_gib == 0:
            assert fast_cap == int(usable * share)
    else:
        assert slow_cap == sum(slow_gib) << 30
        assert fast_cap == (fast_cap_gib << 30 or usable)


@settings(max_examples=200, deadline=None)
@given(
    fast_mib=st.lists(st.integers(0, 512), min_size=2, max_size=8),
    slow_mib=st.lists(st.integers(0, 512), min_size=8, max_size=8),
    weights=st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=8, max_size=8),
    silent=st.lists(st.booleans(), min_size=8, max_size=8),
    fast_cap_mib=st.integers(64, 2048),
    slow_cap_mib=st.integers(64, 4096),
)
def test_no_usage_claim_holds_slow_memory_past_the_share(
    fast_mib: list[int],
    slow_mib: list[int],
    weights: list[float],
    silent: list[bool],
    fast_cap_mib: int,
    slow_cap_mib: int,
) -> None:
    """VMs that claim all they have as used, or are silent, and a fast tier
    that asks some to shrink (a guest may never let its fast tier come down).
    Each slow floor is the need the new fast target leaves to the slow tier,
    capped by the share: never more, whatever the VM claims or pins (a floor
    past the share for the pages a shrinking VM must demote let a guest that
    refused every fast unplug hold 520 MiB of slow memory against a share of
    220, and ask a co-tenant for memory it used), and never less. A silent
    VM's is what it has, capped by the share (uncapped, a guest that claimed
    everything and then went silent held 1,024 MiB against 220)."""
    n = len(fast_mib)
    fast = np.array(fast_mib, np.int64) * MiB
    slow = np.array(slow_mib[:n], np.int64) * MiB
    quiet = np.array(silent[:n])
    used = np.where(quiet, np.nan, (fast + slow).astype(np.float64))
    limit = np.full(n, 1 << 30, np.int64)
    inputs = PolicyInputs(
        now_s=0.0,
        weight=np.array(weights[:n]),
        hot_bytes=used.copy(),
        used_bytes=used,
        fast=_tier(fast, np.zeros(n), limit),
        slow=_tier(slow, np.zeros(n), limit),
        fast_capacity_bytes=fast_cap_mib * MiB,
        slow_capacity_bytes=slow_cap_mib * MiB,
    )
    result = plan(inputs, CFG)
    left = np.maximum(fast + slow - result.fast.target, 0)  # what is plugged
    capped = np.minimum(left, result.slow.share)
    floor, known = result.slow.floor, ~quiet
    assert (floor[known] >= capped[known]).all()
    assert (floor[known] <= capped[known] + BLOCK).all()
    # A VM without a report keeps what it has, up to the share, as on the
    # fast tier: silence holds no more than a claim.
    kept = np.minimum(slow, result.slow.share)
    assert (floor[quiet] >= kept[quiet]).all()
    assert (floor[quiet] <= kept[quiet] + BLOCK).all()
