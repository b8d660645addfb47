"""Scenarios on the emulator: a workload with a known hot set and the real daemon.

The same definitions run on a real Linux guest with two NUMA nodes in
tests/integration/test_guest_linux.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import hypertier_wire as wire
from agent_guest import config
from agent_guest.daemon import Daemon
from emu.backends.guest import EmuGuestBackend
from emu.machine import FAST, SLOW, Params, World
from emu.workloads.synthetic import Gups

pytestmark = pytest.mark.slow

MiB = 1 << 20
EPOCH_S = 0.25
HOT_PAGES = 5000  # 20 MiB: fits the 128 MiB fast node
CFG = config.loads(
    f'[guest]\nbackend = "emu"\nreport_interval_s = {EPOCH_S}\n'
    f"[sampler]\nwindow_s = {EPOCH_S}\n"
    "[mover]\nfast_reserve_bytes = 4194304\n"
    "[targets]\nmin_rss_bytes = 0\n"
)


class Scenario:
    """A VM (128 MiB fast, 512 MiB slow) running GUPS over 200 MiB, 10% hot."""

    def __init__(
        self, seed: int, pmu: str = "pebs", params: Params | None = None
    ) -> None:
        self.world = World(8 << 30, 32 << 30, params, seed=seed)
        self.world.add_vm("vm", 2, 128 * MiB, 512 * MiB)
        self.workload = Gups(50_000, seed=seed, hot_fraction=0.1)
        self.pid = self.world.spawn("vm", self.workload, total_accesses=10**13)
        self.backend = EmuGuestBackend(self.world, "vm", pmu=pmu)
        self.daemon = Daemon(CFG, self.backend, self.world.clock)

    def hot_on_fast(self) -> float:
        proc = self.world.process("vm", self.pid)
        hot = proc.addr_of(self.workload.hot_set(HOT_PAGES))
        return float(np.mean(self.backend.page_nodes(self.pid, hot) == FAST))

    def epoch(self) -> None:
        self.world.clock.advance(EPOCH_S)
        self.daemon.tick()

    def epochs(self, count: int) -> None:
        for _ in range(count):
            self.epoch()

    def fast_used_bytes(self) -> int:
        return self.backend.numa_nodes()[FAST].used_bytes

    def move_ops(self) -> list[tuple[object, ...]]:
        return [op for op in self.world.oplog if op[0] == "move_pages"]


def _move_hot_set_off_fast(s: Scenario) -> None:
    """Start from the worst case: the phase change moves the hot set to slow.

    A new hot region that is already mostly on the fast node (cold memory the
    agent never needed to demote) is put on the slow node first, as if the
    program had first-touched it there."""
    s.workload.phase_change()
    if s.hot_on_fast() >= 0.5:
        proc = s.world.process("vm", s.pid)
        hot = proc.addr_of(s.workload.hot_set(HOT_PAGES))
        s.world.move_pages("vm", s.pid, hot, SLOW)


def _hot_set_comes_back_within_four_epochs(s: Scenario) -> None:
    """Move the hot set off the fast node; four epochs later it is back."""
    _move_hot_set_off_fast(s)
    assert s.hot_on_fast() < 0.5
    s.epochs(4)
    assert s.hot_on_fast() >= 0.95


@pytest.mark.parametrize("pmu", ["pebs", "ibs"])
def test_hot_set_reaches_the_fast_node_within_four_epochs(pmu: str) -> None:
    """One epoch to start sampling, three of samples to show reuse (the default
    classify.reuse_epochs), then the exchange."""
    _hot_set_comes_back_within_four_epochs(Scenario(seed=2, pmu=pmu))


def test_placement_reconverges_after_a_phase_change() -> None:
    s = Scenario(seed=3)
    s.epochs(4)
    assert s.hot_on_fast() >= 0.95
    _hot_set_comes_back_within_four_epochs(s)


def test_converged_placement_does_not_ping_pong() -> None:
    s = Scenario(seed=2)
    s.epochs(6)
    moved = sum(int(op[4]) for op in s.move_ops())  # type: ignore[call-overload]
    s.epochs(6)
    later = sum(int(op[4]) for op in s.move_ops()) - moved  # type: ignore[call-overload]
    assert later <= 0.02 * 50_000


def test_fast_allotment_shrink_demotes_first_and_never_overflows() -> None:
    s = Scenario(seed=2)
    s.epochs(4)
    before = len(s.move_ops())
    allot = 64 * MiB
    s.world.vm("vm").to_guest += wire.encode(wire.Allot(1, allot, 1024 * MiB))
    used = [s.fast_used_bytes()]
    for _ in range(4):
        s.epoch()
        used.append(s.fast_used_bytes())
    after = s.move_ops()[before:]
    assert after, "the shrink caused no migration"
    assert after[0][3] == SLOW  # demotion comes first
    assert all(u <= allot for u in used[1:])  # under the new allotment at once
    assert s.hot_on_fast() >= 0.95  # the hot set still fits and stays


def test_the_kernels_free_reserve_is_left_alone() -> None:
    """The guest kernel keeps 2 % of the fast node free (its watermarks): a
    move into that fails with -ENOMEM. The agent counts it out of its room, so
    the hot set comes back by exchange and no move is refused."""
    s = Scenario(seed=2, params=Params(node_reserve_pct=2.0))
    kept = s.world.node_reserve_pages(s.world.vm("vm"), FAST)
    s.epochs(12)  # past the growth hold: no mover reserve kept
    _hot_set_comes_back_within_four_epochs(s)
    s.epochs(8)
    assert s.daemon._exchanger.stats.failures["ENOMEM"] == 0
    assert s.backend.numa_nodes()[FAST].free_bytes >= kept * 4096
