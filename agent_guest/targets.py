"""Which NUMA nodes are fast and slow, and which processes the agent manages:
from the backend's view and the configuration (pure over the backend Protocol)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent_guest.backend import GuestBackend, NumaNode, ProcessInfo, Tier
from agent_guest.config import Config
from agent_guest.errors import NoSuchProcess
from hypertier_common.errors import AccessDenied

__all__ = ["NodeRoles", "bytes_on_nodes", "node_roles", "pick_targets"]


@dataclass(frozen=True)
class NodeRoles:
    fast: tuple[int, ...]
    slow: tuple[int, ...]


def node_roles(
    nodes: Sequence[NumaNode],
    fast_override: Sequence[int],
    slow_override: Sequence[int],
) -> NodeRoles:
    """Fast and slow node ids: the backend's tiers unless the config names them."""
    fast = [n.node for n in nodes if n.tier is Tier.FAST]
    slow = [n.node for n in nodes if n.tier is Tier.SLOW]
    if fast_override or slow_override:
        present = {n.node for n in nodes}
        fast = [n for n in fast_override if n in present] or [
            n for n in fast if n not in slow_override
        ]
        slow = [n for n in slow_override if n in present] or [
            n for n in slow if n not in fast
        ]
    return NodeRoles(tuple(fast), tuple(slow))


def pick_targets(
    cfg: Config,
    backend: GuestBackend,
    self_pid: int,
    procs: Sequence[ProcessInfo] | None = None,
) -> list[int]:
    """Pids to manage: explicit pids, else every process over ``min_rss_bytes``
    that matches the cgroup prefix and command pattern (if set)."""
    t = cfg.targets
    pattern = re.compile(t.comm_pattern) if t.comm_pattern else None
    out = []
    for p in backend.processes() if procs is None else procs:
        if p.pid == self_pid:
            continue
        if t.pids and p.pid not in t.pids:
            continue
        if not t.pids and p.rss_bytes < t.min_rss_bytes:
            continue
        if t.cgroup and not p.cgroup.startswith(t.cgroup):
            continue
        if pattern and not (pattern.search(p.comm) or pattern.search(p.cmdline)):
            continue
        out.append(p.pid)
    return sorted(out)


def bytes_on_nodes(
    backend: GuestBackend, pids: Sequence[int], nodes: Sequence[int]
) -> int:
    """The resident bytes of ``pids`` on ``nodes`` (``GuestBackend.node_bytes``:
    costly, a page-table walk); a process gone or denied counts nothing."""
    out = 0
    for pid in pids:
        try:
            by_node = backend.node_bytes(pid)
        except (NoSuchProcess, AccessDenied):
            continue  # the next target refresh drops it
        out += sum(by_node.get(n, 0) for n in nodes)
    return out
