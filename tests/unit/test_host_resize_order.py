"""agent_host.policy.order_resizes: which resizes of a tick go out, in what order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_host.backend import Tier
from agent_host.policy import Resize, Step, order_resizes

MiB = 1 << 20


def _arr(fast: list[int], slow: list[int]) -> np.ndarray:
    return np.array([fast, slow], np.int64) * MiB


def _steps(ops: list[Resize]) -> list[tuple[Step, int]]:
    return [(op.step, op.row) for op in ops]


def test_slow_growth_first_fast_growth_last() -> None:
    requested = _arr([100, 100], [100, 100])
    target = _arr([150, 50], [50, 150])  # vm0: fast up, slow down; vm1: the reverse
    ops = order_resizes(requested, target, np.zeros_like(requested), budget=64)
    assert _steps(ops) == [
        (Step.SLOW_GROWTH, 1),
        (Step.FAST_SHRINK, 1),
        (Step.SLOW_SHRINK, 0),
        (Step.FAST_GROWTH, 0),
    ]
    assert ops[0] == Resize(Step.SLOW_GROWTH, 1, Tier.SLOW, 150 * MiB)


def test_unchanged_tiers_get_no_resize() -> None:
    requested = _arr([100, 100], [100, 100])
    target = _arr([100, 120], [100, 100])
    ops = order_resizes(requested, target, np.zeros_like(requested), budget=64)
    assert ops == [Resize(Step.FAST_GROWTH, 1, Tier.FAST, 120 * MiB)]


def test_the_budget_admits_whole_vms_largest_change_first() -> None:
    requested = _arr([100, 100, 100], [100, 100, 100])
    target = _arr([110, 190, 140], [90, 10, 60])
    ops = order_resizes(requested, target, np.zeros_like(requested), budget=3)
    assert {op.row for op in ops} == {1}  # vm1's two resizes; vm2's would be 4
    ops = order_resizes(requested, target, np.zeros_like(requested), budget=4)
    assert {op.row for op in ops} == {1, 2}


def test_vms_below_a_floor_come_before_larger_changes() -> None:
    requested = _arr([100, 100], [100, 100])
    target = _arr([400, 110], [100, 100])
    floor = _arr([0, 105], [0, 0])  # vm1 is below its floor
    ops = order_resizes(requested, target, floor, budget=1)
    assert _steps(ops) == [(Step.FAST_GROWTH, 1)]


def test_ties_keep_row_order() -> None:
    requested = _arr([100, 100, 100], [100, 100, 100])
    target = _arr([120, 120, 120], [100, 100, 100])
    ops = order_resizes(requested, target, np.zeros_like(requested), budget=2)
    assert [op.row for op in ops] == [0, 1]


def test_no_vms_no_resizes() -> None:
    empty = np.zeros((2, 0), np.int64)
    assert order_resizes(empty, empty, empty, budget=8) == []


@pytest.mark.parametrize(
    ("tier", "grow", "step"),
    [
        pytest.param(Tier.SLOW, True, Step.SLOW_GROWTH, id="slow-grow"),
        pytest.param(Tier.FAST, False, Step.FAST_SHRINK, id="fast-shrink"),
        pytest.param(Tier.SLOW, False, Step.SLOW_SHRINK, id="slow-shrink"),
        pytest.param(Tier.FAST, True, Step.FAST_GROWTH, id="fast-grow"),
    ],
)
def test_step_of_tier_and_direction(tier: Tier, grow: bool, step: Step) -> None:
    assert Step.of(tier, grow) is step


@given(
    data=st.data(),
    n=st.integers(1, 12),
    budget=st.integers(0, 30),
)
def test_properties(data: st.DataObject, n: int, budget: int) -> None:
    row = st.lists(st.integers(0, 8), min_size=n, max_size=n)
    requested = np.array([data.draw(row), data.draw(row)], np.int64)
    target = np.array([data.draw(row), data.draw(row)], np.int64)
    floor = np.array([data.draw(row), data.draw(row)], np.int64)
    ops = order_resizes(requested, target, floor, budget)
    assert len(ops) <= budget
    assert [op.step for op in ops] == sorted(op.step for op in ops)
    pairs = [(op.row, op.tier) for op in ops]
    assert len(pairs) == len(set(pairs))
    for op in ops:
        k = 0 if op.tier is Tier.FAST else 1
        assert op.new_bytes == target[k, op.row] != requested[k, op.row]
    changed = target != requested
    for r in {op.row for op in ops}:  # a VM is admitted whole
        assert sum(op.row == r for op in ops) == int(changed[:, r].sum())
    if budget >= int(changed.sum()):
        assert len(ops) == int(changed.sum())
