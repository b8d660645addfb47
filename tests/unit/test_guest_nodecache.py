"""agent_guest.nodecache: pages' nodes, trusted for a number of epochs."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from agent_guest.nodecache import NodeCache

_addr = st.integers(0, 63).map(lambda p: p * 4096)
_events = st.lists(
    st.tuples(
        st.lists(st.tuples(_addr, st.integers(-2, 2)), max_size=12),
        st.integers(0, 3),  # epochs that pass after this batch
    ),
    max_size=10,
)


@given(ttl=st.integers(0, 4), events=_events)
def test_lookup_is_the_last_node_learnt_while_fresh(
    ttl: int, events: list[tuple[list[tuple[int, int]], int]]
) -> None:
    cache = NodeCache(ttl)
    truth: dict[int, tuple[int, int]] = {}  # addr -> (node, epoch learnt)
    epoch = 0
    for batch, gap in events:
        if batch:
            addr = np.array([a for a, _ in batch], np.uint64)
            node = np.array([n for _, n in batch], np.int32)
            cache.learn(1, addr, node, epoch)
            if ttl:
                for a, n in batch:
                    if n >= 0:
                        truth[a] = (n, epoch)
        epoch += gap
        probe = np.arange(64, dtype=np.uint64) * np.uint64(4096)
        got, known = cache.lookup(1, probe, epoch)
        for a, n, k in zip(probe.tolist(), got.tolist(), known.tolist(), strict=True):
            fresh = a in truth and truth[a][1] > epoch - ttl
            assert k == fresh
            assert n == (truth[a][0] if fresh else -1)
    assert cache.lookup(2, np.zeros(3, np.uint64), epoch)[1].sum() == 0  # other pid


def test_the_oldest_entries_go_first_beyond_the_bound() -> None:
    cache = NodeCache(ttl_epochs=100, max_pages=4)
    addr = np.arange(8, dtype=np.uint64) * np.uint64(4096)
    for e in range(8):
        cache.learn(7, addr[e : e + 1], np.zeros(1, np.int32), e)
    _, known = cache.lookup(7, addr, 8)
    assert known.tolist() == [False] * 4 + [True] * 4
    cache.forget(7)
    assert len(cache) == 0
