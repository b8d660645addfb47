"""Unit tests of agent_host.policy: weights, elasticity, floors, rate limits."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from agent_host.config import PolicyConfig
from agent_host.policy import PolicyInputs, TierInputs, fair_split, plan

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 2 * MiB
CFG = PolicyConfig(
    min_resize_interval_s=0.0,
    max_step_bytes=64 * GiB,
    hysteresis_bytes=0,
    hysteresis_ratio=0.0,
    safety_margin_bytes=128 * MiB,
    safety_margin_ratio=0.0,
)


@dataclass
class Vm:
    weight: float = 1.0
    fast: int = 2 * GiB  # requested and current
    slow: int = 2 * GiB
    fast_res: int = 1 * GiB
    slow_res: int = 1 * GiB
    fast_limit: int = 16 * GiB
    slow_limit: int = 16 * GiB
    hot: float = float("nan")
    pressure: float = 0.0
    free: float = float("nan")
    fast_current: int | None = None


def _tier(vms: list[Vm], prefix: str) -> TierInputs:
    req = np.array([getattr(v, prefix) for v in vms], dtype=np.int64)
    cur = np.array(
        [
            (v.fast_current if prefix == "fast" and v.fast_current is not None else r)
            for v, r in zip(vms, req, strict=True)
        ],
        dtype=np.int64,
    )
    return TierInputs(
        requested=req,
        current=cur,
        reservation=np.array([getattr(v, prefix + "_res") for v in vms], np.int64),
        limit=np.array([getattr(v, prefix + "_limit") for v in vms], np.int64),
        block=np.full(len(vms), BLOCK, np.int64),
        last_resize_s=np.full(len(vms), -np.inf),
    )


def _inputs(vms: list[Vm], fast_cap: int, slow_cap: int = 1 << 50) -> PolicyInputs:
    return PolicyInputs(
        now_s=100.0,
        weight=np.array([v.weight for v in vms]),
        hot_bytes=np.array([v.hot for v in vms]),
        # the guest's used memory: what is plugged less what it has free
        used_bytes=np.array([v.fast + v.slow - v.free for v in vms]),
        fast=_tier(vms, "fast"),
        slow=_tier(vms, "slow"),
        fast_capacity_bytes=fast_cap,
        slow_capacity_bytes=slow_cap,
    )


def _busy(weight: float, hot_gib: float) -> Vm:
    """A VM whose hot set is ``hot_gib``, with its cold rest on the slow tier and
    1 GiB free."""
    slow = int(hot_gib * GiB) + 2 * GiB
    return Vm(weight=weight, hot=hot_gib * GiB, slow=slow, slow_limit=slow, free=GiB)


def test_fair_split_splits_by_weight() -> None:
    out = fair_split(
        np.zeros(3), np.full(3, 100.0), np.array([4.0, 2.0, 1.0]), capacity=70.0
    )
    assert out.tolist() == pytest.approx([40.0, 20.0, 10.0])


def test_fair_split_gives_saturated_share_to_others() -> None:
    out = fair_split(
        np.zeros(3), np.array([5.0, 100.0, 100.0]), np.ones(3), capacity=65.0
    )
    assert out.tolist() == pytest.approx([5.0, 30.0, 30.0])


def test_fair_split_floors_count_toward_the_share() -> None:
    # A floor below the share is part of it, not added on top.
    out = fair_split(
        np.array([20.0, 0.0]), np.full(2, 100.0), np.ones(2), capacity=60.0
    )
    assert out.tolist() == pytest.approx([30.0, 30.0])
    out = fair_split(
        np.array([40.0, 0.0]), np.full(2, 100.0), np.ones(2), capacity=60.0
    )
    assert out.tolist() == pytest.approx([40.0, 20.0])


def test_fair_split_returns_floors_when_they_exceed_capacity() -> None:
    out = fair_split(np.full(2, 10.0), np.full(2, 50.0), np.ones(2), capacity=15.0)
    assert out.tolist() == [10.0, 10.0]


def test_fast_tier_follows_demand_by_class_weight() -> None:
    gold, silver, bronze = _busy(4.0, 12), _busy(2.0, 12), _busy(1.0, 12)
    result = plan(_inputs([gold, silver, bronze], fast_cap=14 * GiB), CFG)
    target = result.fast.target / GiB
    # Everyone demands more than its share: 14 GiB split 4:2:1 (to the block).
    assert target.tolist() == pytest.approx([8.0, 4.0, 2.0], abs=0.01)
    assert result.fast.share.tolist() == result.fast.target.tolist()


def test_demand_below_share_frees_capacity_for_others() -> None:
    small, big = _busy(4.0, 2), _busy(1.0, 20)
    result = plan(_inputs([small, big], fast_cap=16 * GiB), CFG)
    assert result.fast.target[0] == pytest.approx(2.2 * GiB, abs=BLOCK)
    assert result.fast.target.sum() <= 16 * GiB
    assert result.fast.target[1] > 13 * GiB


def test_no_vm_drops_below_its_reservation() -> None:
    vms = [_busy(4.0, 30), Vm(weight=1.0, fast_res=3 * GiB, hot=0.0, free=8.0 * GiB)]
    result = plan(_inputs(vms, fast_cap=8 * GiB), CFG)
    assert result.fast.target[1] == 3 * GiB
    assert result.fast.target.sum() <= 8 * GiB


def test_never_above_limit() -> None:
    vm = Vm(hot=100.0 * GiB, pressure=1.0, free=0.0, fast_limit=4 * GiB)
    result = plan(_inputs([vm], fast_cap=64 * GiB), CFG)
    assert result.fast.target[0] == 4 * GiB


def test_without_report_nothing_shrinks() -> None:
    vm = Vm(fast=6 * GiB, slow=3 * GiB)
    result = plan(_inputs([vm], fast_cap=64 * GiB), CFG)
    assert result.fast.target[0] == 6 * GiB
    assert result.slow.target[0] == 3 * GiB


def test_total_never_below_used_plus_margin() -> None:
    # 8 GiB plugged (6 fast + 2 slow), 1 GiB free: the guest uses 7 GiB.
    # A hungry neighbour claims the fast memory this VM does not use.
    vm = Vm(fast=6 * GiB, slow=2 * GiB, hot=0.0, free=1.0 * GiB, slow_limit=5 * GiB)
    result = plan(_inputs([vm, _busy(1.0, 100)], fast_cap=16 * GiB), CFG)
    total = int(result.fast.target[0] + result.slow.target[0])
    assert total >= 7 * GiB + CFG.safety_margin_bytes
    assert result.slow.target[0] == 5 * GiB  # slow absorbs what fast gives up


def test_unmet_demand_grows_fast_tier() -> None:
    vm = replace(_busy(1.0, 6), fast=4 * GiB)
    result = plan(_inputs([vm], fast_cap=64 * GiB), CFG)
    assert result.fast.target[0] == pytest.approx(6.6 * GiB, abs=BLOCK)


def test_pressure_alone_grows_nothing() -> None:
    # Pressure is the guest's view, for the operator; demand drives the policy.
    vm = Vm(fast=4 * GiB, hot=1.0 * GiB, pressure=1.0, free=0.0)
    result = plan(_inputs([vm, _busy(1.0, 60)], fast_cap=8 * GiB), CFG)
    assert result.fast.target[0] < 4 * GiB


def test_hysteresis_holds_small_changes() -> None:
    cfg = replace(CFG, hysteresis_bytes=512 * MiB, hysteresis_ratio=0.1)
    vm = Vm(fast=4 * GiB, hot=3.9 * GiB / 1.1, free=1.0 * GiB)
    result = plan(_inputs([vm], fast_cap=64 * GiB), cfg)
    assert result.fast.target[0] == 4 * GiB


def test_step_limit_cuts_large_changes() -> None:
    cfg = replace(CFG, max_step_bytes=1 * GiB)
    vm = Vm(fast=2 * GiB, hot=10.0 * GiB, free=0.0)
    result = plan(_inputs([vm], fast_cap=64 * GiB), cfg)
    assert result.fast.target[0] == 3 * GiB


def test_resize_interval_holds_changes() -> None:
    cfg = replace(CFG, min_resize_interval_s=30.0)
    inputs = _inputs([Vm(fast=2 * GiB, hot=10.0 * GiB, free=0.0)], fast_cap=64 * GiB)
    recent = replace(inputs.fast, last_resize_s=np.array([90.0]))
    result = plan(replace(inputs, fast=recent), cfg)
    assert result.fast.target[0] == 2 * GiB


def test_reservation_is_restored_despite_hysteresis_and_interval() -> None:
    cfg = replace(CFG, min_resize_interval_s=30.0, hysteresis_bytes=4 * GiB)
    inputs = _inputs([Vm(fast=1 * GiB, fast_res=2 * GiB)], fast_cap=64 * GiB)
    recent = replace(inputs.fast, last_resize_s=np.array([99.0]))
    result = plan(replace(inputs, fast=recent), cfg)
    assert result.fast.target[0] == 2 * GiB


def test_growth_waits_for_unplug_of_shrinking_vm() -> None:
    # VM 0 is asked to shrink from 12 GiB, but its guest still holds 12 GiB.
    shrinking = Vm(fast=12 * GiB, hot=1.0 * GiB, free=11.0 * GiB)
    grower = Vm(fast=2 * GiB, hot=10.0 * GiB, free=0.0)
    result = plan(_inputs([shrinking, grower], fast_cap=14 * GiB), CFG)
    assert result.fast.target[0] < 12 * GiB
    assert result.fast.target[1] == 2 * GiB  # nothing is free yet


def test_targets_are_block_aligned() -> None:
    vms = [_busy(3.0, 7.3), _busy(1.7, 5.1), _busy(1.0, 2.9)]
    result = plan(_inputs(vms, fast_cap=11 * GiB + 3 * MiB), CFG)
    assert (result.fast.target % BLOCK == 0).all()
    assert (result.slow.target % BLOCK == 0).all()


def test_slow_overcommit_ratio_scales_slow_capacity() -> None:
    # Each guest needs 1.125 GiB of slow tier and wants 10 % more.
    vm = Vm(fast=1 * GiB, fast_limit=1 * GiB, slow_res=0, hot=0.0, free=1.0 * GiB)
    cap = int(2.3625 * GiB)
    inputs = _inputs([vm, replace(vm)], fast_cap=64 * GiB, slow_cap=cap)
    base = plan(inputs, CFG)
    over = plan(inputs, replace(CFG, slow_overcommit_ratio=2.0))
    assert base.slow.target.sum() <= cap
    assert over.slow.target.sum() > cap


def test_floors_above_capacity_report_overcommit() -> None:
    vms = [Vm(fast_res=4 * GiB, fast=4 * GiB) for _ in range(3)]
    result = plan(_inputs(vms, fast_cap=8 * GiB), CFG)
    assert result.fast.overcommitted
    assert (result.fast.target >= 4 * GiB).all()


def test_floors_are_not_plugged_past_the_capacity() -> None:
    # Both are below a raised reservation; only 3 GiB are free: floors get it
    # in proportion, nothing beyond.
    vms = [Vm(fast=2 * GiB, fast_res=4 * GiB) for _ in range(2)]
    result = plan(_inputs(vms, fast_cap=7 * GiB), CFG)
    assert result.fast.overcommitted
    assert result.fast.target.sum() <= 7 * GiB
    assert (result.fast.target > 2 * GiB).all()


def test_floor_growth_comes_before_optional_growth() -> None:
    below = Vm(fast=1 * GiB, fast_res=2 * GiB, hot=0.0, free=4 * GiB)
    hungry = _busy(4.0, 30)
    result = plan(_inputs([below, hungry], fast_cap=4 * GiB), CFG)
    assert result.fast.target[0] == 2 * GiB
    assert result.fast.target.sum() <= 4 * GiB


def test_fast_memory_nobody_claims_is_not_taken_back() -> None:
    idle = Vm(fast=8 * GiB, hot=1.0 * GiB, free=4.0 * GiB)
    modest = _busy(1.0, 2)
    result = plan(_inputs([idle, modest], fast_cap=16 * GiB), CFG)
    assert result.fast.target[0] == 8 * GiB
    hungry = _busy(1.0, 100)
    result = plan(_inputs([idle, hungry], fast_cap=16 * GiB), CFG)
    assert result.fast.target[0] < 8 * GiB


def test_shifting_load_moves_fast_tier_to_the_new_hot_vm() -> None:
    a, b = _busy(1.0, 12), _busy(1.0, 1)
    first = plan(_inputs([a, b], fast_cap=14 * GiB), CFG).fast.target
    a2 = replace(a, fast=int(first[0]), hot=1.0 * GiB)
    b2 = replace(b, fast=int(first[1]), hot=12.0 * GiB)
    second = plan(_inputs([a2, b2], fast_cap=14 * GiB), CFG).fast.target
    # b grows only into what is free now; a's shrink is planned at once.
    assert first[0] > first[1]
    assert second[0] < first[0]
    assert second.sum() <= 14 * GiB
