"""The competing tiered-memory designs as emulator policies, and the policy registry.

Each baseline drives the World only through the operations its source design
uses (guest ``drain_samples``/``move_pages``; host ``host_scan_ept``,
``host_migrate``, ``pml_drain``, ``resize``), so the World charges tracking,
migration and TLB-flush costs where the real design pays them. All per-page
work is vectorised with numpy; loops run over VMs, processes or sample batches.
Design notes and sources: docs/baselines.md.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from emu.policy import POLICY_NAMES, Policy, VmSpec
from emu.world import FAST, PAGE_SIZE, SLOW, EmuProcess, EmuVm, World

__all__ = [
    "BASELINES",
    "AllFastPolicy",
    "HememPolicy",
    "HostTppPolicy",
    "MemtisPolicy",
    "NonePolicy",
    "PolicyUnavailable",
    "TppGuestPolicy",
    "VtmmPolicy",
    "make_policy",
    "split_pool",
]

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

# Migration bandwidth every design gets, so that none wins by moving faster:
# 512 MiB/s of 4 KiB pages (HeMem and Memtis report a few hundred MiB/s to a
# few GiB/s of copy bandwidth; TPP's default promotion rate limit is higher).
DEFAULT_MIGRATE_PAGES_PER_S = 131_072
# PEBS sample period of the guest-side PEBS designs (one record per N misses).
DEFAULT_PEBS_PERIOD = 200
_NEVER = -(1 << 30)


class PolicyUnavailable(ImportError):
    """A policy whose implementation is not installed (e.g. emu.hypertier_policy)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"policy {name!r} is unavailable: {reason}")
        self.policy = name
        self.reason = reason


# ------------------------------------------------------------------ helpers
def _budget(pages_per_s: int, epoch_s: float) -> int:
    return max(0, int(pages_per_s * epoch_s))


def _guest_nodes(vm: EmuVm, proc: EmuProcess) -> npt.NDArray[np.int8]:
    """Guest NUMA node of each vpn of ``proc`` (-1 not present), as its guest sees."""
    out = np.full(proc.npages, -1, np.int8)
    present = proc.pt >= 0
    out[present] = vm.node_of_frame(proc.pt[present]).astype(np.int8)
    return out


def _sample_vpns(
    proc: EmuProcess, pids: npt.NDArray[np.int32], addrs: npt.NDArray[np.uint64]
) -> I64:
    """vpns of the samples of ``proc`` that fall inside its mapping."""
    a = addrs[pids == proc.pid].astype(np.int64) - proc.base_addr
    vpn: I64 = a // PAGE_SIZE
    inside: npt.NDArray[np.bool_] = (a >= 0) & (vpn < proc.npages)
    out: I64 = vpn[inside]
    return out


def _free_fast(vm: EmuVm) -> int:
    return vm.plugged[FAST] - vm.used_pages(FAST)


def _move(world: World, vm: EmuVm, proc: EmuProcess, vpns: I64, node: int) -> int:
    """Guest move_pages(2) of ``vpns`` to ``node``; returns pages now on ``node``."""
    if len(vpns) == 0:
        return 0
    status = world.move_pages(vm.name, proc.pid, proc.addr_of(vpns), node)
    return int(np.count_nonzero(status == node))


def _plan(
    candidates: int, cold: int, free: int, headroom: int, budget: int
) -> tuple[int, int]:
    """How many pages to promote and demote with ``budget`` moves in all.

    Demotion first restores ``headroom`` free fast pages (the watermark), then
    makes room for promotions that do not fit; each promotion that needs a
    demotion costs two moves of the budget.
    """
    deficit = min(max(0, headroom - free), cold, budget)
    avail = max(0, free - headroom)
    budget -= deficit
    cold -= deficit
    if candidates <= avail:
        return min(candidates, budget), deficit
    direct = min(avail, budget)
    swaps = min(candidates - direct, cold, (budget - direct) // 2)
    return direct + swaps, deficit + swaps


def _exchange(
    world: World,
    vm: EmuVm,
    proc: EmuProcess,
    promote: I64,
    demote: I64,
    budget: int,
    headroom: int,
) -> tuple[int, int]:
    """Promote ``promote`` (best first) after demoting enough of ``demote``.

    ``demote`` is ordered coldest first; see :func:`_plan`. Returns
    (promoted, demoted).
    """
    k, need = _plan(len(promote), len(demote), _free_fast(vm), headroom, budget)
    demoted = _move(world, vm, proc, demote[:need], SLOW)
    k = min(k, max(0, _free_fast(vm) - headroom))
    promoted = _move(world, vm, proc, promote[:k], FAST)
    return promoted, demoted


# ------------------------------------------------------------- limit cases
class NonePolicy:
    """No management: first-touch placement (Linux default), nothing ever moves."""

    name = "none"

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        del world, pids

    def tick(self, world: World, epoch_s: float) -> None:
        del world, epoch_s

    def close(self) -> None:
        pass


class AllFastPolicy(NonePolicy):
    """The limit: each VM gets its whole footprint (and its slow share) as DRAM."""

    name = "all-fast"

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return [
            replace(
                s, fast_bytes=max(s.fast_bytes + s.slow_bytes, s.npages * PAGE_SIZE)
            )
            for s in specs
        ]


# ---------------------------------------------------------------- host TPP
@dataclass
class _HostVmState:
    last_access: I64  # scan tick of the last access seen, per gfn
    prev_access: I64  # the access before that (active-LRU check)


class HostTppPolicy:
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

    def __init__(
        self,
        scan_period_s: float = 0.02,
        migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S,
        headroom_fraction: float = 0.02,
    ) -> None:
        self.scan_period_s = scan_period_s
        self.migrate_pages_per_s = migrate_pages_per_s
        self.headroom_fraction = headroom_fraction
        self._state: dict[str, _HostVmState] = {}
        self._since_scan_s = 0.0
        self._scans = 0
        self.scans = 0  # EPT scans done per VM (for tests and reports)

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        for name in pids:
            vm = world.vm(name)
            world.host_scan_ept(name)  # arms A-bit tracking (nothing set yet)
            self._state[name] = _HostVmState(
                np.full(vm.nframes, _NEVER, np.int64),
                np.full(vm.nframes, _NEVER, np.int64),
            )

    def tick(self, world: World, epoch_s: float) -> None:
        self._since_scan_s += epoch_s
        if self._since_scan_s + 1e-12 < self.scan_period_s:
            return
        budget = _budget(self.migrate_pages_per_s, self._since_scan_s)
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
        k, need = _plan(len(p_gfn), sum(map(len, demote)), free, headroom, budget)
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


class TppGuestPolicy:
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

    def __init__(
        self,
        scan_pages_per_s: int = 65_536,
        active_window_s: float | None = None,
        migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S,
        headroom_fraction: float = 0.02,
    ) -> None:
        self.scan_pages_per_s = scan_pages_per_s
        self.active_window_s = active_window_s
        self.migrate_pages_per_s = migrate_pages_per_s
        self.headroom_fraction = headroom_fraction
        self._pids: dict[str, int] = {}
        self._lru: dict[str, _LruState] = {}
        self._window_s: dict[str, float] = {}
        self._now_s = 0.0

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
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
        for name, pid in self._pids.items():
            if name not in world.vms or pid not in world.vm(name).procs:
                continue
            vm = world.vm(name)
            proc = vm.procs[pid]
            pids, addrs, _, _ = world.drain_samples(name, epoch_s)
            vpn = np.unique(_sample_vpns(proc, pids, addrs))
            lru = self._lru[name]
            lru.prev_ref[vpn] = lru.last_ref[vpn]
            lru.last_ref[vpn] = now
            nodes = _guest_nodes(vm, proc)
            active = lru.prev_ref[vpn] >= now - self._window_s[name]
            promote = vpn[(nodes[vpn] == SLOW) & active]
            cold = np.flatnonzero((nodes == FAST) & (lru.last_ref < now))
            cold = cold[np.argsort(lru.last_ref[cold], kind="stable")]
            headroom = int(vm.plugged[FAST] * self.headroom_fraction)
            _exchange(
                world,
                vm,
                proc,
                promote,
                cold,
                _budget(self.migrate_pages_per_s, epoch_s),
                headroom,
            )

    def close(self) -> None:
        self._lru.clear()


# --------------------------------------------------------------------- vTMM
def split_pool(pool: int, floor: F64, weight: F64, cap: I64) -> I64:
    """Split ``pool`` whole units (blocks) into shares: floors, then by weight.

    Each share is its floor plus a part of what the floors leave, in proportion
    to ``weight`` (equally if every weight is 0), never above ``cap``: what a
    capped share cannot take goes to the others (water-filling). Fractions are
    settled by largest remainder, so the shares sum to exactly
    ``min(pool, cap.sum())``; floors that do not fit are scaled down together.
    """
    cap_f = cap.astype(np.float64)
    total = min(pool, int(cap.sum()))
    base = np.minimum(floor, cap_f)
    if base.sum() > total:
        base = base * (total / base.sum())
    w = weight if weight.sum() > 0 else np.ones(len(weight))
    ideal = base.copy()
    free = np.ones(len(base), bool)
    while free.any():
        extra = total - ideal[~free].sum() - base[free].sum()
        wf = w[free] if w[free].sum() > 0 else np.ones(int(free.sum()))
        ideal[free] = base[free] + extra * wf / wf.sum()
        over = free & (ideal > cap_f)
        if not over.any():
            break
        ideal[over] = cap_f[over]
        free &= ~over
    shares = np.minimum(np.floor(ideal), cap_f).astype(np.int64)
    short = total - int(shares.sum())
    while short > 0:  # largest remainders first, among shares below their cap
        order = np.argsort(shares - ideal, kind="stable")
        order = order[shares[order] < cap[order]][:short]
        shares[order] += 1
        short -= len(order)
    return shares


class VtmmPolicy:
    """vTMM: PML tracking, multi-level queues, temperature sorting, a fast pool.

    Source: Sha et al., "vTMM: Tiered Memory Management for Virtual Machines",
    EuroSys 2023. The hypervisor drains each VM's page-modification log every
    epoch (``pml_drain``: PML-full exits and the drain's remote flush are charged
    by the World). A multi-level queue gives each guest frame a temperature: seen
    in a drain, it climbs one level; unseen, it decays one. Frames are bucket-
    sorted by level; the hottest at ``hot_level`` or above (default: the upper
    half of the queues) that fit the VM's fast node form its target set, and the
    guest side moves the difference with ``move_pages``, exchanging a fast page
    only for a strictly hotter one. Every ``pool_period_s`` the fast memory of
    all VMs is repartitioned in proportion to each VM's warm-set size
    (virtio-mem ``resize``), shrinking donors before growing receivers, within
    each VM's maximum. The pool is the fast memory the VMs started with, split in
    whole blocks by :func:`split_pool`, so repartitions never shrink it; with no
    warm frame anywhere the split stays as it is.
    """

    name = "vtmm"

    def __init__(
        self,
        levels: int = 8,
        hot_level: int | None = None,
        migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S,
        pool_period_s: float = 0.1,
        min_share: float = 0.25,
    ) -> None:
        self.levels = levels
        self.hot_level = hot_level if hot_level is not None else levels // 2
        self.migrate_pages_per_s = migrate_pages_per_s
        self.pool_period_s = pool_period_s
        self.min_share = min_share
        self._pids: dict[str, int] = {}
        self._level: dict[str, npt.NDArray[np.int8]] = {}
        self._initial_fast: dict[str, int] = {}
        self._since_pool_s = 0.0

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        for name in pids:
            vm = world.vm(name)
            world.pml_drain(name)  # arms PML logging
            self._level[name] = np.zeros(vm.nframes, np.int8)
            self._initial_fast[name] = vm.plugged[FAST]

    def tick(self, world: World, epoch_s: float) -> None:
        budget = _budget(self.migrate_pages_per_s, epoch_s)
        for name, pid in self._pids.items():
            if name not in world.vms or pid not in world.vm(name).procs:
                continue
            vm = world.vm(name)
            proc = vm.procs[pid]
            level = self._level[name]
            seen = np.zeros(vm.nframes, bool)
            seen[world.pml_drain(name)] = True
            up = seen & (level < self.levels - 1)
            down = ~seen & (level > 0)
            level[up] += 1
            level[down] -= 1
            self._migrate(world, vm, proc, level, budget)
        self._since_pool_s += epoch_s
        if self._since_pool_s + 1e-12 >= self.pool_period_s:
            self._since_pool_s = 0.0
            self._repartition(world)

    def _migrate(
        self,
        world: World,
        vm: EmuVm,
        proc: EmuProcess,
        level: npt.NDArray[np.int8],
        budget: int,
    ) -> None:
        # temperature of each vpn through the guest's reverse map
        mapped = proc.pt >= 0
        temp = np.zeros(proc.npages, np.int64)
        temp[mapped] = level[proc.pt[mapped]]
        nodes = _guest_nodes(vm, proc)
        # bucket sort: hottest level first, then by address (stable)
        order = np.argsort(-temp, kind="stable")
        order = order[temp[order] >= self.hot_level]
        target = order[: vm.plugged[FAST]]
        in_target = np.zeros(proc.npages, bool)
        in_target[target] = True
        promote = target[nodes[target] == SLOW]
        demote = np.flatnonzero((nodes == FAST) & ~in_target)
        demote = demote[np.argsort(temp[demote], kind="stable")]
        # exchange only strictly hotter for colder (no churn among equals)
        free = max(0, _free_fast(vm))
        rest = promote[free:]
        m = min(len(rest), len(demote))
        hotter = temp[rest[:m]] > temp[demote[:m]]
        swaps = int(np.argmin(hotter)) if not hotter.all() else m
        _exchange(world, vm, proc, promote[: free + swaps], demote[:swaps], budget, 0)

    def _repartition(self, world: World) -> None:
        names = [n for n in self._pids if n in world.vms]
        if len(names) < 2:
            return
        blk = world.params.block_bytes // PAGE_SIZE
        warm = np.array(
            [np.count_nonzero(self._level[n] > 0) for n in names], np.float64
        )
        if not warm.any():
            return  # nothing to go by: keep the split
        # The VMs' own fast memory, not what is plugged now: a share that
        # rounded down or a shrink that stopped short must not leave the pool.
        pool = sum(self._initial_fast[n] for n in names) // blk
        floor = np.array([self._initial_fast[n] * self.min_share for n in names])
        cap = np.array([world.vm(n).node_max[FAST] // blk for n in names], np.int64)
        want = split_pool(pool, floor / blk, warm, cap) * blk
        cur = np.array([world.vm(n).plugged[FAST] for n in names], np.int64)
        if np.array_equal(want, cur):
            return
        for i in np.flatnonzero(want < cur):  # donors first: frees host DRAM
            world.resize(names[i], FAST, int(want[i]) * PAGE_SIZE)
        fast = world.host_nodes[FAST]
        for i in np.flatnonzero(want > cur):
            room = max(0, fast.capacity_pages - fast.used_pages)
            grow = min(int(want[i] - cur[i]), room // blk * blk)
            if grow > 0:
                world.resize(names[i], FAST, (int(cur[i]) + grow) * PAGE_SIZE)

    def close(self) -> None:
        self._level.clear()


# ---------------------------------------------------- PEBS-based designs
class _PebsPolicy:
    """Shared part of the guest PEBS designs: sampling, per-page counts, moves."""

    name = "pebs"

    def __init__(
        self,
        period: int = DEFAULT_PEBS_PERIOD,
        migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S,
        ring_pages: int = 128,
    ) -> None:
        self.period = period
        self.migrate_pages_per_s = migrate_pages_per_s
        self.ring_pages = ring_pages
        self._pids: dict[str, int] = {}
        self._counts: dict[str, F64] = {}
        self._period: dict[str, int] = {}

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        for name, pid in pids.items():
            proc = world.process(name, pid)
            self._counts[name] = np.zeros(proc.npages, np.float64)
            self._period[name] = self.period
            world.start_sampling(
                name, "pebs", [pid], period=self.period, ring_pages=self.ring_pages
            )

    def tick(self, world: World, epoch_s: float) -> None:
        budget = _budget(self.migrate_pages_per_s, epoch_s)
        for name, pid in self._pids.items():
            if name not in world.vms or pid not in world.vm(name).procs:
                continue
            vm = world.vm(name)
            proc = vm.procs[pid]
            pids, addrs, _, _ = world.drain_samples(name, epoch_s)
            vpn = _sample_vpns(proc, pids, addrs)
            self._account(name, vm, vpn, proc.npages, epoch_s)
            self._place(world, vm, proc, self._counts[name], budget)
            self._retune(world, name, vm, pid, len(vpn), epoch_s)

    def _account(
        self, name: str, vm: EmuVm, vpn: I64, npages: int, epoch_s: float
    ) -> None:
        raise NotImplementedError

    def _place(
        self, world: World, vm: EmuVm, proc: EmuProcess, counts: F64, budget: int
    ) -> None:
        raise NotImplementedError

    def _retune(
        self, world: World, name: str, vm: EmuVm, pid: int, n: int, epoch_s: float
    ) -> None:
        del world, name, vm, pid, n, epoch_s

    def close(self) -> None:
        self._counts.clear()


class MemtisPolicy(_PebsPolicy):
    """Memtis: PEBS, a page-access histogram and a dynamic hot threshold.

    Source: Lee et al., "MEMTIS: Efficient Memory Tiering with Dynamic Page
    Classification and Page Size Determination", SOSP 2023. ksampled adds PEBS
    samples to per-page counts and keeps a log2 histogram of them; the hot
    threshold is the lowest bin whose pages, with all hotter bins, still fit the
    fast node, and warm is one bin below. Every ``cooling_samples`` samples all
    counts halve (cooling). kmigrated promotes hot slow pages and demotes cold
    (below warm) fast pages to make room. The sample period adapts to keep
    sampling CPU under ``cpu_limit`` of the VM's vCPU time. (Memtis' huge-page
    split is not modelled: the emulator maps 4 KiB pages.)
    """

    name = "memtis"

    def __init__(
        self,
        period: int = DEFAULT_PEBS_PERIOD,
        migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S,
        cooling_samples: int = 50_000,
        cpu_limit: float = 0.03,
        max_period: int = 64_000,
    ) -> None:
        super().__init__(period, migrate_pages_per_s)
        self.cooling_samples = cooling_samples
        self.cpu_limit = cpu_limit
        self.max_period = max_period
        self._since_cool: dict[str, int] = {}
        self.hot_bin: dict[str, int] = {}

    def _account(
        self, name: str, vm: EmuVm, vpn: I64, npages: int, epoch_s: float
    ) -> None:
        counts = self._counts[name]
        counts += np.bincount(vpn, minlength=npages)
        n = self._since_cool.get(name, 0) + len(vpn)
        while n >= self.cooling_samples:
            np.floor(counts / 2, out=counts)
            n -= self.cooling_samples
        self._since_cool[name] = n

    @staticmethod
    def hot_threshold_bin(counts: F64, capacity: int) -> int:
        """Lowest histogram bin whose pages and all hotter ones fit ``capacity``.

        Bin 0 holds unsampled pages, bin b >= 1 counts in [2**(b-1), 2**b).
        """
        bins = np.zeros(len(counts), np.int64)
        pos = counts >= 1
        bins[pos] = np.floor(np.log2(counts[pos])).astype(np.int64) + 1
        hist = np.bincount(bins)
        above = np.cumsum(hist[::-1])[::-1]  # pages in bins >= b
        fits = np.flatnonzero(above[1:] <= capacity) + 1
        return int(fits[0]) if len(fits) else len(hist)

    def _place(
        self, world: World, vm: EmuVm, proc: EmuProcess, counts: F64, budget: int
    ) -> None:
        cap = vm.plugged[FAST]
        hot = self.hot_threshold_bin(counts, cap)
        self.hot_bin[vm.name] = hot
        bins = np.zeros(len(counts), np.int64)
        pos = counts >= 1
        bins[pos] = np.floor(np.log2(counts[pos])).astype(np.int64) + 1
        nodes = _guest_nodes(vm, proc)
        promote = np.flatnonzero((nodes == SLOW) & (bins >= hot))
        promote = promote[np.argsort(-counts[promote], kind="stable")]
        # cold: below the warm bin (hot - 1); never-sampled pages are always cold
        demote = np.flatnonzero((nodes == FAST) & (bins < max(1, hot - 1)))
        demote = demote[np.argsort(counts[demote], kind="stable")]
        _exchange(world, vm, proc, promote, demote, budget, 0)

    def _retune(
        self, world: World, name: str, vm: EmuVm, pid: int, n: int, epoch_s: float
    ) -> None:
        used = n * world.params.cost.pebs_sample_ns * 1e-9
        share = used / max(1e-12, epoch_s * vm.vcpus)
        period = self._period[name]
        if share > self.cpu_limit and period < self.max_period:
            period *= 2
        elif share < self.cpu_limit / 4 and period > self.period:
            period //= 2
        else:
            return
        self._period[name] = period
        world.start_sampling(name, "pebs", [pid], period=period, ring_pages=128)


class HememPolicy(_PebsPolicy):
    """HeMem: PEBS with fixed hot thresholds and threshold-triggered cooling.

    Source: Raybuck et al., "HeMem: Scalable Tiered Memory Management for Big
    Data Applications and Real NVM", SOSP 2021. Each PEBS sample counts one
    access to its page; a page is hot at ``hot_threshold`` (HeMem's
    HOT_READ_THRESHOLD = 8; the emulator's samples do not tell loads from
    stores, so the write threshold is not used). Whenever a page reaches
    ``cooling_threshold`` (COOLING_THRESHOLD = 18) every count halves. The
    policy thread promotes hot slow pages and, when the fast node is full,
    demotes cold (not hot) fast pages. Thresholds do not adapt to the sample
    rate or the fast-tier size; that is the design.
    """

    name = "hemem"

    def __init__(
        self,
        period: int = DEFAULT_PEBS_PERIOD,
        migrate_pages_per_s: int = DEFAULT_MIGRATE_PAGES_PER_S,
        hot_threshold: int = 8,
        cooling_threshold: int = 18,
        batch_samples: int = 512,
    ) -> None:
        super().__init__(period, migrate_pages_per_s)
        self.hot_threshold = hot_threshold
        self.cooling_threshold = cooling_threshold
        self.batch_samples = batch_samples
        self.coolings = 0

    def _account(
        self, name: str, vm: EmuVm, vpn: I64, npages: int, epoch_s: float
    ) -> None:
        counts = self._counts[name]
        # HeMem handles samples one by one; batches small enough that a page
        # crosses the cooling threshold at most about once keep that behaviour
        for start in range(0, len(vpn), self.batch_samples):
            counts += np.bincount(
                vpn[start : start + self.batch_samples], minlength=npages
            )
            if counts.max() >= self.cooling_threshold:
                np.floor(counts / 2, out=counts)
                self.coolings += 1

    def _place(
        self, world: World, vm: EmuVm, proc: EmuProcess, counts: F64, budget: int
    ) -> None:
        nodes = _guest_nodes(vm, proc)
        hot = counts >= self.hot_threshold
        promote = np.flatnonzero((nodes == SLOW) & hot)
        promote = promote[np.argsort(-counts[promote], kind="stable")]
        demote = np.flatnonzero((nodes == FAST) & ~hot)
        demote = demote[np.argsort(counts[demote], kind="stable")]
        _exchange(world, vm, proc, promote, demote, budget, 0)


# ----------------------------------------------------------------- registry
BASELINES: dict[str, type] = {
    "none": NonePolicy,
    "all-fast": AllFastPolicy,
    "tpp-host": HostTppPolicy,
    "tpp-guest": TppGuestPolicy,
    "vtmm": VtmmPolicy,
    "memtis": MemtisPolicy,
    "hemem": HememPolicy,
}
_EXTERNAL = {
    "hypertier": "emu.hypertier_policy:HyperTierPolicy",
    "oracle": "emu.oracle:OraclePolicy",
    "oracle-phase": "emu.oracle:OraclePhasePolicy",
}


def make_policy(name: str, **options: object) -> Policy:
    """A fresh policy by its name (see ``emu.policy.POLICY_NAMES``).

    Raises:
        ValueError: the name is unknown.
        PolicyUnavailable: the policy's module is not installed (hypertier
            before ``emu.hypertier_policy`` exists); never replaced by a stand-in.
    """
    if name in BASELINES:
        policy: Policy = BASELINES[name](**options)
        return policy
    if name in _EXTERNAL:
        module, _, cls = _EXTERNAL[name].partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            raise PolicyUnavailable(name, f"module {module} is not present") from err
        factory = getattr(mod, cls, None)
        if factory is None:
            raise PolicyUnavailable(name, f"{module} has no {cls}")
        external: Policy = factory(**options)
        return external
    raise ValueError(f"policy {name!r} unknown; choose from {list(POLICY_NAMES)}")
