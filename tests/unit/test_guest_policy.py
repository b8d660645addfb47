"""agent_guest.policy.fast_budget: the guest's fast-tier budget, a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent_guest.backend import PAGE_SIZE, NumaNode, Tier
from agent_guest.config import MoverConfig
from agent_guest.policy import fast_budget

MiB = 1 << 20
NO_RESERVE = MoverConfig(fast_reserve_bytes=0, fast_reserve_pct=0.0)


def _node(total_mib: int, used_mib: int, node: int = 0) -> NumaNode:
    return NumaNode(
        node, Tier.FAST, total_mib * MiB, (total_mib - used_mib) * MiB, True
    )


def test_without_an_allotment_the_limit_is_the_fast_nodes() -> None:
    b = fast_budget([_node(100, 40), _node(28, 0, 1)], None, 40 * MiB, NO_RESERVE, True)
    assert (b.limit_bytes, b.used_bytes, b.unmanaged_bytes) == (128 * MiB, 40 * MiB, 0)
    assert b.room_bytes == 128 * MiB
    assert b.free_pages == 88 * MiB // PAGE_SIZE


def test_a_smaller_allotment_is_the_limit_a_larger_one_is_not() -> None:
    small = fast_budget([_node(100, 10)], 64 * MiB, 10 * MiB, NO_RESERVE, True)
    large = fast_budget([_node(100, 10)], 256 * MiB, 10 * MiB, NO_RESERVE, True)
    assert (small.limit_bytes, large.limit_bytes) == (64 * MiB, 100 * MiB)


def test_the_reserve_is_kept_only_once_there_is_history() -> None:
    mover = MoverConfig(fast_reserve_bytes=0, fast_reserve_pct=2.0)
    early = fast_budget([_node(100, 0)], None, 0, mover, keep_reserve=False)
    later = fast_budget([_node(100, 0)], None, 0, mover, keep_reserve=True)
    assert early.limit_bytes == 100 * MiB
    assert later.limit_bytes == 100 * MiB - mover.reserve_bytes(100 * MiB)


def test_the_reserve_is_the_larger_of_bytes_and_share() -> None:
    mover = MoverConfig(fast_reserve_bytes=8 * MiB, fast_reserve_pct=2.0)
    b = fast_budget([_node(100, 0)], None, 0, mover, keep_reserve=True)
    assert b.limit_bytes == 92 * MiB


def test_memory_the_targets_do_not_hold_is_not_room_for_them() -> None:
    b = fast_budget([_node(100, 60)], 80 * MiB, 20 * MiB, NO_RESERVE, True)
    assert b.unmanaged_bytes == 40 * MiB
    assert b.room_bytes == 40 * MiB


def test_a_shrunk_allotment_makes_free_pages_negative() -> None:
    b = fast_budget([_node(100, 90)], 50 * MiB, 90 * MiB, NO_RESERVE, True)
    assert b.free_pages == -40 * MiB // PAGE_SIZE
    assert b.room_bytes == 50 * MiB


@given(
    total=st.integers(0, 1 << 40),
    used_share=st.floats(0, 1),
    allot=st.one_of(st.none(), st.integers(0, 1 << 41)),
    managed=st.integers(0, 1 << 41),
    pct=st.floats(0, 50),
    keep=st.booleans(),
)
def test_room_fits_in_the_limit_and_the_limit_in_node_and_allotment(
    total: int,
    used_share: float,
    allot: int | None,
    managed: int,
    pct: float,
    keep: bool,
) -> None:
    used = int(total * used_share)
    node = NumaNode(0, Tier.FAST, total, total - used, True)
    b = fast_budget([node], allot, managed, MoverConfig(fast_reserve_pct=pct), keep)
    assert 0 <= b.room_bytes <= b.limit_bytes <= min(total, allot or total)
    assert 0 <= b.unmanaged_bytes <= used
