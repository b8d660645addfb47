"""The emulator's conservation invariants: no page lost, duplicated or unaccounted."""

from __future__ import annotations

import numpy as np

from emu.machine.memory import Memory
from emu.machine.state import FAST, SLOW, InvariantError

__all__ = ["check_invariants"]


def check_invariants(world: Memory) -> None:
    """Raise InvariantError if any page is lost, duplicated or misaccounted."""
    host_used = [0] * len(world.host_nodes)
    for vm in world.vms.values():
        if vm._frames is None:
            continue
        seen = 0
        for proc in vm.procs.values():
            mapped = np.flatnonzero(proc.pt >= 0)
            g = proc.pt[mapped]
            if len(np.unique(g)) != len(g):
                raise InvariantError(f"{vm.name}/{proc.pid}: a frame mapped twice")
            if np.any(vm.f.pid[g] != proc.pid) or np.any(vm.f.vpn[g] != mapped):
                raise InvariantError(f"{vm.name}/{proc.pid}: reverse map broken")
            if np.any(vm.f.host[g] < 0):
                raise InvariantError(f"{vm.name}/{proc.pid}: used frame unbacked")
            seen += len(g)
        if seen != int(np.count_nonzero(vm.f.pid >= 0)):
            raise InvariantError(f"{vm.name}: frames owned by no process")
        for node in (FAST, SLOW):
            b = vm.node_base[node]
            tail = vm.f.pid[b + vm.plugged[node] : b + vm.node_max[node]]
            if np.any(tail >= 0):
                raise InvariantError(f"{vm.name}: page in unplugged memory")
            htail = vm.f.host[b + vm.plugged[node] : b + vm.node_max[node]]
            if np.any(htail >= 0):
                raise InvariantError(f"{vm.name}: unplugged memory still backed")
        for hn in world.host_nodes:
            host_used[hn.node] += int(np.count_nonzero(vm.f.host == hn.node))
    for hn in world.host_nodes:
        if host_used[hn.node] != hn.used_pages:
            raise InvariantError(
                f"host node {hn.node}: {hn.used_pages} pages accounted, "
                f"{host_used[hn.node]} backed"
            )
        if hn.used_pages > hn.capacity_pages:
            # A full node spills to the other; when both are full the
            # emulated host is overcommitted (a real one would OOM).
            raise InvariantError(
                f"host node {hn.node}: {hn.used_pages} pages backed, "
                f"capacity {hn.capacity_pages}"
            )
