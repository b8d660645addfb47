"""Where the targets' pages were when last seen, so the mover need not ask the
kernel again every epoch.

Finding candidates asks move_pages(2) in status mode for the node of every page
of the ranges it examines: tens of thousands of pages an epoch, most of them
where they were the epoch before. The kernel walks the page tables for each, at
about 0.5 us a page on bare metal and some 20 times that under QEMU's TCG, where
it was most of the guest agent's system time. A page changes node only when the
agent moves it (the cache learns the new node from move_pages' status), or when
something else does: an unplug that migrates pages off a shrinking node, the
kernel's own demotion or NUMA balancing, a munmap and a new mapping at the same
address. So an entry is trusted for ``ttl_epochs`` epochs only, and the daemon
forgets everything when the host's allotment or plugged size changes or the
kernel's own counters of node migrations move.
"""

from __future__ import annotations

import numpy as np

from hypertier_common.arrays import I32, I64, U64, BoolArray

__all__ = ["NodeCache"]


class NodeCache:
    """Per pid: page address -> (node, epoch seen), trusted ``ttl_epochs`` epochs;
    at most ``max_pages`` entries per pid (the oldest go first). ``ttl_epochs``
    0 caches nothing."""

    def __init__(self, ttl_epochs: int, max_pages: int = 1 << 21) -> None:
        self._ttl = ttl_epochs
        self._max = max_pages
        self._by_pid: dict[int, tuple[U64, I32, I64]] = {}

    def lookup(self, pid: int, addr: U64, epoch: int) -> tuple[I32, BoolArray]:
        """(node, known) for each of ``addr``: ``known`` where an entry is at
        most ``ttl_epochs`` old at ``epoch`` (``node`` is -1 elsewhere)."""
        node = np.full(addr.shape[0], -1, np.int32)
        known = np.zeros(addr.shape[0], bool)
        entry = self._by_pid.get(pid)
        if entry is None or addr.shape[0] == 0:
            return node, known
        a, n, e = entry
        i = np.minimum(np.searchsorted(a, addr), a.shape[0] - 1)
        known = (a[i] == addr) & (e[i] > epoch - self._ttl)
        node[known] = n[i[known]]
        return node, known

    def learn(self, pid: int, addr: U64, node: I32, epoch: int) -> None:
        """The pages ``addr`` are on ``node`` at ``epoch`` (negative: unknown,
        e.g. not present or a failed move; not recorded).

        Pages already cached are updated in place (a move's batch: O(k log n));
        new ones are inserted in one pass, which also drops expired entries.
        """
        if self._ttl == 0:
            return
        ok = node >= 0
        addr, node = addr[ok], node[ok].astype(np.int32)
        if addr.shape[0] == 0:
            return
        # One entry per page, the last given winning: a stable sort keeps the
        # order among equal addresses, so take each run's last.
        order = np.argsort(addr, kind="stable")
        addr, node = addr[order], node[order]
        last = np.ones(addr.shape[0], bool)
        last[:-1] = addr[1:] != addr[:-1]
        addr, node = addr[last], node[last]
        entry = self._by_pid.get(pid)
        if entry is None:
            a = addr
            n = node
            e = np.full(addr.shape[0], epoch, np.int64)
        else:
            a, n, e = entry
            i = np.searchsorted(a, addr)
            ic = np.minimum(i, a.shape[0] - 1)
            here = (a[ic] == addr) if a.shape[0] else np.zeros(addr.shape[0], bool)
            n[ic[here]] = node[here]
            e[ic[here]] = epoch
            new = ~here
            if not new.any():
                return
            fresh = e > epoch - self._ttl
            a, n, e = a[fresh], n[fresh], e[fresh]
            i = np.searchsorted(a, addr[new])
            a = np.insert(a, i, addr[new])
            n = np.insert(n, i, node[new])
            e = np.insert(e, i, epoch)
        if a.shape[0] > self._max:
            keep = np.sort(np.argsort(-e, kind="stable")[: self._max])
            a, n, e = a[keep], n[keep], e[keep]
        self._by_pid[pid] = (a, n, e)

    def forget(self, pid: int | None = None) -> None:
        """Drop ``pid``'s entries, or every pid's (None)."""
        if pid is None:
            self._by_pid.clear()
        else:
            self._by_pid.pop(pid, None)

    def __len__(self) -> int:
        return sum(v[0].shape[0] for v in self._by_pid.values())
