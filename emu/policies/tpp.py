"""TPP, run by the host kernel on VM memory (``tpp-host``) or inside the guest
(``tpp-guest``). Design notes and sources: docs/baselines.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emu.machine import FAST, SLOW, World
from emu.policies.base import PolicyBase
from emu.policies.mechanisms import (
    DEFAULT_MIGRATE_PAGES_PER_S,
    NEVER,
    epoch_budget,
    exchange,
    guest_nodes,
    plan_moves,
    sample_vpns,
)
from hypertier_common.arrays import F64, I64

__all__ = ["HostTppPolicy", "TppGuestPolicy"]


# ---------------------------------------------------------------- host TPP
@dataclass
class _HostVmState:
    last_access: I64  # scan tick of the last access seen, per gfn
    prev_access: I64  # the access before that (active-LRU check)


@dataclass(eq=False)
class HostTppPolicy(PolicyBase):
    """Host TPP: the host kernel tiers VM memory it cannot see into.

    Source: Maruf et al., "TPP: Transparent Page Placement for CXL-Enabled
    Tiered-Memory", ASPLOS 2023, applied by the host to guest memory as in the
    motivating table of Demeter (SOSP 2025). Every ``scan_period_s`` the host
    test-and-clears the EPT accessed bits of every VM (``host_scan_ept``: rmap
    walk, one ``kvm_flush_remote_tlbs`` per scanned region with accessed pages,
    charged to the VM). A slow-backed frame seen accessed in two consecutive
    scans (TPP's active-LRU check) is promoted; room is made by demoting the
    frames not accessed for the longest, kept ``headroom_fraction`` free
    (TPP's decoupled demotion watermark). Host LRUs are global, so candidates of
    all VMs compete for one host fast node. Each ``host_migrate`` invalidates
    the EPT entry: one remote flush (INVEPT on every vCPU) per page.
    """

    name = "tpp-host"

    scan_period_s: float = 0.02
    migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S
    headroom_fraction: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        self._state: dict[str, _HostVmState] = {}
        self._since_scan_s = 0.0
        self._scans = 0
        self.scans = 0  # EPT scans done per VM (for tests and reports)

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        for name in pids:
            vm = world.vm(name)
            world.host_scan_ept(name)  # arms A-bit tracking (nothing set yet)
            self._state[name] = _HostVmState(
                np.full(vm.nframes, NEVER, np.int64),
                np.full(vm.nframes, NEVER, np.int64),
            )

    def tick(self, world: World, epoch_s: float) -> None:
        self._since_scan_s += epoch_s
        if self._since_scan_s + 1e-12 < self.scan_period_s:
            return
        budget = epoch_budget(self.migrate_pages_per_s, self._since_scan_s)
        self._since_scan_s = 0.0
        self._scans += 1
        self.scans += 1
        now = self._scans
        names = [n for n in self._state if n in world.vms]
        promote: list[I64] = []
        demote: list[I64] = []
        for name in names:
            st = self._state[name]
            acc = world.host_scan_ept(name)
            st.prev_access[acc] = st.last_access[acc]
            st.last_access[acc] = now
            tier = world.host_tier_of_frames(name)
            active = st.prev_access[acc] >= now - 2
            promote.append(acc[(tier[acc] == SLOW) & active])
            cold = np.flatnonzero((tier == FAST) & (st.last_access < now))
            demote.append(cold[np.argsort(st.last_access[cold], kind="stable")])
        fast = world.host_nodes[FAST]
        headroom = int(fast.capacity_pages * self.headroom_fraction)
        # one global LRU: interleave VMs by their candidates' rank
        p_vm, p_gfn = _interleave(promote)
        free = fast.capacity_pages - fast.used_pages
        k, need = plan_moves(len(p_gfn), sum(map(len, demote)), free, headroom, budget)
        d_key = np.concatenate(
            [self._state[n].last_access[d] for n, d in zip(names, demote, strict=True)]
        )
        d_vm = np.concatenate(
            [np.full(len(d), i, np.int64) for i, d in enumerate(demote)]
        )
        d_gfn = np.concatenate(demote) if demote else np.empty(0, np.int64)
        order = np.argsort(d_key, kind="stable")[:need]
        for i, name in enumerate(names):
            sel = d_gfn[order][d_vm[order] == i]
            if len(sel):
                world.host_migrate(name, sel, SLOW)  # host node 1 is the slow tier
        k = min(k, max(0, fast.capacity_pages - fast.used_pages - headroom))
        for i, name in enumerate(names):
            sel = p_gfn[:k][p_vm[:k] == i]
            if len(sel):
                world.host_migrate(name, sel, FAST)

    def close(self) -> None:
        self._state.clear()


def _interleave(per_vm: Sequence[I64]) -> tuple[I64, I64]:
    """Concatenate per-VM candidate lists ordered by rank, then VM (round robin)."""
    if not per_vm:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    vm = np.concatenate([np.full(len(c), i, np.int64) for i, c in enumerate(per_vm)])
    rank = np.concatenate([np.arange(len(c), dtype=np.int64) for c in per_vm])
    gfn = np.concatenate(per_vm).astype(np.int64)
    order = np.lexsort((vm, rank))
    return vm[order], gfn[order]


# --------------------------------------------------------------- guest TPP
@dataclass
class _LruState:
    last_ref: F64  # virtual time of the last hinting fault, per vpn
    prev_ref: F64


@dataclass(eq=False)
class TppGuestPolicy(PolicyBase):
    """Guest TPP: the guest kernel's NUMA-hinting promotion and LRU demotion.

    Source: Maruf et al., "TPP: Transparent Page Placement for CXL-Enabled
    Tiered-Memory", ASPLOS 2023 (upstream as NUMA balancing memory tiering mode).
    The guest's NUMA-balancing scanner protects ``scan_pages_per_s`` pages per
    second (the kernel default, 256 MiB per 1 s scan period; ``change_prot_numa``,
    whose PTE scan and range flushes the World charges), and the first access
    afterwards takes a hinting fault (charged per fault). A slow page is promoted
    with ``move_pages`` when it faults while on the active LRU, i.e. it faulted
    before within ``active_window_s`` (default: two rounds of the scanner over
    the footprint); otherwise the fault only activates it.
    Demotion keeps ``headroom_fraction`` of the fast node free and makes room for
    promotions, taking the pages whose last reference is oldest (the inactive
    LRU tail).
    """

    name = "tpp-guest"

    scan_pages_per_s: int = 65_536
    active_window_s: float | None = None
    migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S
    headroom_fraction: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        self._lru: dict[str, _LruState] = {}
        self._window_s: dict[str, float] = {}
        self._now_s = 0.0

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        super().attach(world, pids)
        for name, pid in pids.items():
            vm = world.vm(name)
            proc = world.process(name, pid)
            vm.hint_scan_pages_per_s = self.scan_pages_per_s
            self._window_s[name] = self.active_window_s or (
                2 * proc.npages / self.scan_pages_per_s
            )
            world.start_sampling(name, "page-fault", [pid])
            self._lru[name] = _LruState(
                np.full(proc.npages, -np.inf), np.full(proc.npages, -np.inf)
            )

    def tick(self, world: World, epoch_s: float) -> None:
        self._now_s += epoch_s
        now = self._now_s
        for name, _, vm, proc in self._running(world):
            pids, addrs, _, _ = world.drain_samples(name, epoch_s)
            vpn = np.unique(sample_vpns(proc, pids, addrs))
            lru = self._lru[name]
            lru.prev_ref[vpn] = lru.last_ref[vpn]
            lru.last_ref[vpn] = now
            nodes = guest_nodes(vm, proc)
            active = lru.prev_ref[vpn] >= now - self._window_s[name]
            promote = vpn[(nodes[vpn] == SLOW) & active]
            cold = np.flatnonzero((nodes == FAST) & (lru.last_ref < now))
            cold = cold[np.argsort(lru.last_ref[cold], kind="stable")]
            headroom = int(vm.plugged[FAST] * self.headroom_fraction)
            exchange(
                world,
                vm,
                proc,
                promote,
                cold,
                epoch_budget(self.migrate_pages_per_s, epoch_s),
                headroom,
            )

    def close(self) -> None:
        self._lru.clear()
