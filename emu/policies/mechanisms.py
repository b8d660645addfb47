"""What the baseline designs share: migration budgets, guest views, page exchange.

Every baseline drives the World only through the operations its source design
uses (guest ``drain_samples``/``move_pages``; host ``host_scan_ept``,
``host_migrate``, ``pml_drain``, ``resize``), so the World charges tracking,
migration and TLB-flush costs where the real design pays them. All per-page
work is vectorised with numpy; loops run over VMs, processes or sample batches.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from emu.machine import FAST, PAGE_SIZE, SLOW, EmuProcess, EmuVm, World
from hypertier_common.arrays import I32, I64, U64, BoolArray

__all__ = [
    "DEFAULT_MIGRATE_PAGES_PER_S",
    "DEFAULT_PEBS_PERIOD",
    "NEVER",
    "epoch_budget",
    "exchange",
    "free_fast",
    "guest_nodes",
    "move_to",
    "plan_moves",
    "sample_vpns",
]


# Migration bandwidth every design gets, so that none wins by moving faster:
# 512 MiB/s of 4 KiB pages (HeMem and Memtis report a few hundred MiB/s to a
# few GiB/s of copy bandwidth; TPP's default promotion rate limit is higher).
DEFAULT_MIGRATE_PAGES_PER_S = 131_072
# PEBS sample period of the guest-side PEBS designs (one record per N misses).
DEFAULT_PEBS_PERIOD = 200
NEVER = -(1 << 30)


# ------------------------------------------------------------------ helpers
def epoch_budget(pages_per_s: int, epoch_s: float) -> int:
    return max(0, int(pages_per_s * epoch_s))


def guest_nodes(vm: EmuVm, proc: EmuProcess) -> npt.NDArray[np.int8]:
    """Guest NUMA node of each vpn of ``proc`` (-1 not present), as its guest sees."""
    out = np.full(proc.npages, -1, np.int8)
    present = proc.pt >= 0
    out[present] = vm.node_of_frame(proc.pt[present]).astype(np.int8)
    return out


def sample_vpns(proc: EmuProcess, pids: I32, addrs: U64) -> I64:
    """vpns of the samples of ``proc`` that fall inside its mapping."""
    a = addrs[pids == proc.pid].astype(np.int64) - proc.base_addr
    vpn: I64 = a // PAGE_SIZE
    inside: BoolArray = (a >= 0) & (vpn < proc.npages)
    out: I64 = vpn[inside]
    return out


def free_fast(vm: EmuVm) -> int:
    return vm.plugged[FAST] - vm.used_pages(FAST)


def move_to(world: World, vm: EmuVm, proc: EmuProcess, vpns: I64, node: int) -> int:
    """Guest move_pages(2) of ``vpns`` to ``node``; returns pages now on ``node``."""
    if len(vpns) == 0:
        return 0
    status = world.move_pages(vm.name, proc.pid, proc.addr_of(vpns), node)
    return int(np.count_nonzero(status == node))


def plan_moves(
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


def exchange(
    world: World,
    vm: EmuVm,
    proc: EmuProcess,
    promote: I64,
    demote: I64,
    budget: int,
    headroom: int,
) -> tuple[int, int]:
    """Promote ``promote`` (best first) after demoting enough of ``demote``.

    ``demote`` is ordered coldest first; see :func:`plan_moves`. Returns
    (promoted, demoted).
    """
    k, need = plan_moves(len(promote), len(demote), free_fast(vm), headroom, budget)
    demoted = move_to(world, vm, proc, demote[:need], SLOW)
    k = min(k, max(0, free_fast(vm) - headroom))
    promoted = move_to(world, vm, proc, promote[:k], FAST)
    return promoted, demoted
