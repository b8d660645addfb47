"""agent_host.fleet: one structure for the host daemon's per-VM state."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as hs

import hypertier_wire as wire
from agent_host.backend import Allotment, DomainInfo, Tier
from agent_host.channel import GuestChannel
from agent_host.config import ChannelConfig, PolicyConfig
from agent_host.fleet import Fleet, VmState
from agent_host.metadata import TieringMetadata, TierMetadata

MiB = 1 << 20


def _state(vm: str, fast_limit: int | None = None) -> VmState:
    allot = (
        Allotment(Tier.SLOW, 1, 64 * MiB, 60 * MiB, 512 * MiB, 2 * MiB),
        Allotment(
            Tier.FAST, 0, 128 * MiB, 128 * MiB, 256 * MiB, 2 * MiB, boot_bytes=MiB
        ),
    )
    tiers = (TierMetadata(Tier.SLOW, 32 * MiB, 1024 * MiB, (1,)),)
    if fast_limit is not None:
        tiers += (TierMetadata(Tier.FAST, 16 * MiB, fast_limit, (0,)),)
    meta = TieringMetadata("gold", tiers)
    info = DomainInfo(vm, f"uuid-{vm}", 2, True, allot)
    return VmState(vm, meta, GuestChannel(vm, ChannelConfig()), info)


def test_rows_follow_the_order_of_adding_and_allotments_are_tier_ordered() -> None:
    fleet = Fleet()
    a, b = _state("a"), _state("b")
    fleet.add(a)
    fleet.add(b)
    assert fleet.stale
    fleet.rebuild(lambda st: 4.0)
    assert not fleet.stale
    assert [st.row for st in fleet] == [0, 1]
    assert fleet.requested[:, 1].tolist() == [128 * MiB, 64 * MiB]  # fast, slow
    assert fleet.boot[:, 0].tolist() == [MiB, 0]
    assert fleet.weight.tolist() == [4.0, 4.0]


def test_limits_are_the_metadata_capped_by_the_device() -> None:
    fleet = Fleet()
    st = _state("a", fast_limit=1 << 40)
    fleet.add(st)
    fleet.rebuild(lambda _: 1.0)
    assert fleet.limit_of(st, Tier.FAST) == 256 * MiB  # the device size
    assert fleet.limit_of(st, Tier.SLOW) == 512 * MiB
    assert fleet.reservation_of(st, Tier.SLOW) == 32 * MiB
    assert fleet.limits_by_name(st) == {"fast": 256 * MiB, "slow": 512 * MiB}


def test_a_tier_without_metadata_is_limited_by_its_device() -> None:
    fleet = Fleet()
    st = _state("a")
    fleet.add(st)
    fleet.rebuild(lambda _: 1.0)
    assert fleet.limit_of(st, Tier.FAST) == 256 * MiB
    assert fleet.reservation_of(st, Tier.FAST) == 0


def test_a_rebuild_keeps_each_vms_last_resize_time() -> None:
    fleet = Fleet()
    a, b, c = _state("a"), _state("b"), _state("c")
    for st in (a, b, c):
        fleet.add(st)
    fleet.rebuild(lambda _: 1.0)
    fleet.last_resize_s[:, c.row] = [5.0, 6.0]
    assert fleet.remove("a")
    assert not fleet.remove("a")
    assert fleet.stale
    fleet.rebuild(lambda _: 1.0)
    assert [st.vm for st in fleet] == ["b", "c"]
    assert fleet.last_resize_s[:, c.row].tolist() == [5.0, 6.0]
    assert fleet.last_resize_s[:, b.row].tolist() == [-math.inf, -math.inf]
    assert fleet.target.shape == (2, 0)  # planned for the old rows: dropped


def _send(vm: VmState, t: float, hot_mib: int, fast_total_mib: int = 128) -> None:
    report = wire.Report(
        seq=int(t) + 1,
        nodes=(
            wire.NodeUsage(0, "fast", fast_total_mib * MiB, 120 * MiB),
            wire.NodeUsage(1, "slow", 64 * MiB, 60 * MiB),
        ),
        hot_bytes=hot_mib * MiB,
        pressure=0.5,
    )
    vm.channel.feed(wire.encode(report), t, {"fast": MiB << 20, "slow": MiB << 20})


def _one_vm() -> tuple[Fleet, VmState]:
    fleet = Fleet()
    vm = _state("a", fast_limit=256 * MiB)
    fleet.add(vm)
    fleet.rebuild(lambda _: 1.0)
    return fleet, vm


def test_a_fall_of_demand_counts_once_it_has_lasted() -> None:
    """A fall counts once it has lasted ``demand_release_s``; a rise at once;
    a change within the VM's band (2 % of its 256 MiB fast limit: 5.12 MiB)
    or 5 % of the demand never."""
    fleet, vm = _one_vm()
    policy = PolicyConfig(demand_release_s=10.0)
    seen = []
    for t, hot_mib in (
        (0, 100),
        (1, 97),
        (2, 20),
        (5, 20),
        (11, 20),
        (12, 20),
        (13, 150),
    ):
        _send(vm, float(t), hot_mib)
        assert fleet.store_report(vm, policy) == ""
        seen.append(int(fleet.hot[vm.row]) // MiB)
        held = vm.guest_status(float(t))["held_hot_bytes"]
        assert held == (None if seen[-1] == hot_mib else seen[-1] * MiB)
    # held at 100 until it is older than 10 s (t = 11: 97 is within the band
    # of 100), then 20 once 97 is too (t = 12); the rise to 150 at once
    assert seen == [100, 100, 100, 100, 100, 20, 150]


@given(jitter=hs.lists(hs.floats(-0.045, 0.045), min_size=1, max_size=30))
def test_an_estimate_jittering_within_5_percent_leaves_the_demand_alone(
    jitter: list[float],
) -> None:
    """Noise of the guest's estimate (each report within 5 % of 150 MiB)
    never moves the demand the policy sees; a change beyond it does."""
    fleet, vm = _one_vm()
    policy = PolicyConfig(demand_release_s=10.0)
    for t, j in enumerate([0.0, *jitter]):
        _send(vm, float(t), int(150 * (1 + j)))
        assert fleet.store_report(vm, policy) == ""
        assert fleet.hot[vm.row] == 150 * MiB
    _send(vm, 100.0, 170)
    fleet.store_report(vm, policy)
    assert fleet.hot[vm.row] == 170 * MiB


def test_a_fall_of_used_memory_counts_once_it_has_lasted() -> None:
    """Used memory (the floors' measure) swinging report by report counts as
    its largest within the release window, as the demand does; a fall that
    lasted counts."""
    fleet, vm = _one_vm()
    policy = PolicyConfig(demand_release_s=10.0)
    seen = []
    for t, used_mib in ((0, 121), (2, 11), (4, 121), (6, 11), (8, 11), (20, 11)):
        _fast_used(vm, float(t), t + 1, used_mib)
        fleet.store_report(vm, policy)
        seen.append(int(fleet.used[vm.row]) // MiB)
    assert seen == [131, 131, 131, 131, 131, 21]  # + 10 MiB on the slow node


def _fast_used(
    vm: VmState, t: float, seq: int, used_mib: int, total_mib: int = 129
) -> None:
    nodes = (
        wire.NodeUsage(0, "fast", total_mib * MiB, used_mib * MiB),
        wire.NodeUsage(1, "slow", 64 * MiB, 10 * MiB),
    )
    report = wire.Report(seq=seq, nodes=nodes, hot_bytes=0, pressure=0.0)
    vm.channel.feed(wire.encode(report), t, {"fast": MiB << 20, "slow": MiB << 20})


def test_a_notice_is_forfeited_unless_the_guest_reached_the_goal_it_announced() -> None:
    """Fast node at 128 MiB + 1 MiB boot memory, a shrink to 96 announced at
    t = 1 (goal 97 MiB in use). By t = 11 the target has moved to 64 (a
    co-tenant's claim rose): a guest that reported 97 answered and keeps its
    notices; one that reported a little less than before, or nothing, did not."""
    for used_mib, forfeited in ((97, False), (120, True), (None, True)):
        fleet, vm = _one_vm()
        hello = wire.encode(wire.Hello("hypertier-guest", "0.1.0"))
        vm.channel.feed(hello, 0.0, {})
        _fast_used(vm, 0.5, 1, 121)
        target = fleet.requested.copy()
        target[0, vm.row] = 96 * MiB
        fleet.track_shrink_notices(target, 1.0, 5.0, 1 << 30)
        assert vm.notice_goal == 97 * MiB
        if used_mib is not None:
            _fast_used(vm, 3.0, 2, used_mib)
        assert not fleet.shrink_due(vm, 64 * MiB, 10.0, 10.0, 0.0)  # 9 s: waits
        assert fleet.shrink_due(vm, 64 * MiB, 11.0, 10.0, 0.0)
        assert vm.notice_forfeited is forfeited


def test_a_notice_goal_counts_no_more_in_use_than_the_host_plugged() -> None:
    """Fast node at 128 MiB + 1 MiB boot memory, a shrink by steps of 16 MiB.
    A guest may report its node a block larger than plugged (a resize may be
    under way); counted as in use, that block would put the goal a block
    above the step, a goal the guest could report reaching while never
    fitting the step, keeping every notice of the shrink."""
    fleet, vm = _one_vm()
    vm.channel.feed(wire.encode(wire.Hello("hypertier-guest", "0.1.0")), 0.0, {})
    _fast_used(vm, 0.5, 1, 131, total_mib=131)  # a block more than plugged
    target = fleet.requested.copy()
    target[0, vm.row] = 64 * MiB
    fleet.track_shrink_notices(target, 1.0, 5.0, 16 * MiB)
    assert vm.notice_goal == (128 + 1 - 16) * MiB
    _fast_used(vm, 3.0, 2, 115, total_mib=131)  # the goal 131 MiB would set
    assert fleet.shrink_due(vm, 112 * MiB, 11.0, 10.0, 0.0)
    assert vm.notice_forfeited


def test_a_flagged_report_is_no_demand_and_falls_like_any_other() -> None:
    """An implausible report (a fast node larger than plugged) claims nothing:
    alternating it with a plausible claim is no way to flap the split."""
    fleet, vm = _one_vm()
    policy = PolicyConfig(demand_release_s=10.0)
    seen = []
    for t, total in ((0, 128), (1, 4096), (2, 128), (3, 4096), (14, 4096)):
        _send(vm, float(t), 100, fast_total_mib=total)
        flagged = fleet.store_report(vm, policy) != ""
        assert flagged == (total > 128)
        seen.append(int(fleet.hot[vm.row]) // MiB)
    assert seen == [100, 100, 100, 100, 0]
    # flagged from the start: no demand at all
    fleet, vm = _one_vm()
    _send(vm, 0.0, 100, fast_total_mib=4096)
    assert fleet.store_report(vm, policy) != ""
    assert fleet.hot[vm.row] == 0.0
