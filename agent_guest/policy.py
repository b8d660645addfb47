"""The guest's fast-tier budget for one epoch (pure arithmetic, no I/O).

How much fast memory the agent may fill and how much of it the managed
processes' hot set may take, from the fast nodes' sizes, the host's allotment
and the mover's reserve (docs/guest.md, "Fast-tier budget").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent_guest.backend import PAGE_SIZE, NumaNode
from agent_guest.config import MoverConfig

__all__ = ["FastBudget", "fast_budget"]


@dataclass(frozen=True)
class FastBudget:
    """One epoch's fast-tier budget, in bytes.

    ``limit_bytes``: fast memory the agent may fill (the fast nodes' size, or
    the host's allotment if smaller, less the mover's reserve once it is kept);
    ``used_bytes``: in use on the fast nodes now; ``unmanaged_bytes``: the part
    of it the managed processes do not hold; ``room_bytes``: what the managed
    processes' hot set may take (the limit less the unmanaged memory).
    """

    limit_bytes: int
    used_bytes: int
    unmanaged_bytes: int
    room_bytes: int

    @property
    def free_pages(self) -> int:
        """Pages the exchange may add to the fast nodes (negative: over the limit)."""
        return (self.limit_bytes - self.used_bytes) // PAGE_SIZE


def fast_budget(
    fast_nodes: Sequence[NumaNode],
    allot_fast_bytes: int | None,
    managed_rss_bytes: int,
    mover: MoverConfig,
    keep_reserve: bool,
) -> FastBudget:
    """The budget of the fast nodes ``fast_nodes``.

    ``allot_fast_bytes`` is the host's last allotment (None: none received);
    ``managed_rss_bytes`` the managed processes' resident memory. The reserve
    (``mover.reserve_bytes``) is kept only with ``keep_reserve``: before a full
    history window of samples the coldest pages are not known, and demotions
    to make room would be blind.
    """
    total = sum(n.total_bytes for n in fast_nodes)
    used = sum(n.used_bytes for n in fast_nodes)
    limit = total if allot_fast_bytes is None else min(total, allot_fast_bytes)
    if keep_reserve:
        limit = max(0, limit - mover.reserve_bytes(limit))
    unmanaged = max(0, used - managed_rss_bytes)
    return FastBudget(limit, used, unmanaged, max(0, limit - unmanaged))
