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
forgets everything when the host's allotment or plugged size changes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["NodeCache"]

_U64 = npt.NDArray[np.uint64]
_I32 = npt.NDArray[np.int32]
_I64 = npt.NDArray[np.int64]


class NodeCache:
    """Per pid: page address -> (node, epoch seen), trusted ``ttl_epochs`` epochs;
    at most ``max_pages`` entries per pid (the oldest go first). ``ttl_epochs``
    0 caches nothing."""

    def __init__(self, ttl_epochs: int, max_pages: int = 1 << 21) -> None:
        self._ttl = ttl_epochs
        self._max = max_pages
        self._by_pid: dict[int, tuple[_U64, _I32, _I64]] = {}
        self.hits = 0

    def lookup(
        self, pid: int, addr: _U64, epoch: int
    ) -> tuple[_I32, npt.NDArray[np.bool_]]:
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
        self.hits += int(known.sum())
        return node, known

    def learn(self, pid: int, addr: _U64, node: _I32, epoch: int) -> None:
        """The pages ``addr`` are on ``node`` at ``epoch`` (negative: unknown,
        e.g. not present or a failed move; not recorded)."""
        if self._ttl == 0:
            return
        ok = node >= 0
        new_a, new_n = addr[ok], node[ok].astype(np.int32)
        old = self._by_pid.get(pid)
        if old is not None:
            a, n, e = old
            fresh = e > epoch - self._ttl
            new_a = np.concatenate((a[fresh], new_a))
            new_n = np.concatenate((n[fresh], new_n))
            new_e = np.concatenate((e[fresh], np.full(int(ok.sum()), epoch, np.int64)))
        else:
            new_e = np.full(new_a.shape[0], epoch, np.int64)
        # One entry per page, the last learnt winning: a stable sort keeps
        # insertion order among equal addresses, so take each run's last.
        order = np.argsort(new_a, kind="stable")
        a, n, e = new_a[order], new_n[order], new_e[order]
        last = np.ones(a.shape[0], bool)
        last[:-1] = a[1:] != a[:-1]
        a, n, e = a[last], n[last], e[last]
        if a.shape[0] > self._max:
            keep = np.sort(np.argsort(-e, kind="stable")[: self._max])
            a, n, e = a[keep], n[keep], e[keep]
        if a.shape[0]:
            self._by_pid[pid] = (a, n, e)
        else:
            self._by_pid.pop(pid, None)

    def forget(self, pid: int | None = None) -> None:
        """Drop ``pid``'s entries, or every pid's (None)."""
        if pid is None:
            self._by_pid.clear()
        else:
            self._by_pid.pop(pid, None)

    def __len__(self) -> int:
        return sum(v[0].shape[0] for v in self._by_pid.values())
