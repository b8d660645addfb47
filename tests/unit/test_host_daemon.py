"""The host daemon on the emulator: discovery, metadata, channel, elastic tiers."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

import hypertier_wire as wire
from agent_host.backend import Tier
from agent_host.config import Config, loads
from agent_host.daemon import Daemon
from agent_host.errors import NoSuchDomain
from agent_host.metadata import parse_metadata
from agent_host.metrics import render
from emu.backends.host import EmuHostBackend
from emu.clock import FakeClock
from emu.machine import PAGE_SIZE, World
from hypertier_common.errors import ConfigError

MiB = 1 << 20
CLASSES = {"gold": 4.0, "silver": 2.0, "bronze": 1.0}
CFG = loads(
    """
[policy]
host_reserved_bytes = 0
min_resize_interval_s = 0
max_step_bytes = 134217728
"""
)


def _world(clock: FakeClock, fast_mib: int = 1024, vms: int = 3) -> World:
    world = World(
        host_fast_bytes=fast_mib * MiB, host_slow_bytes=4096 * MiB, clock=clock
    )
    for i in range(vms):
        name = f"vm{i}"
        world.add_vm(name, 2, 128 * MiB, 128 * MiB, 768 * MiB, 1024 * MiB)
        world.spawn(name, None, npages=200 * MiB // PAGE_SIZE)
    return world


def _claim(world: World, vm: str, seq: int, hot: int, pressure: float = 0.0) -> None:
    """A report of ``vm``'s true nodes with a hot set of ``hot`` bytes."""
    v = world.vm(vm)
    nodes = tuple(
        wire.NodeUsage(i, t, v.plugged[i] * PAGE_SIZE, v.used_pages(i) * PAGE_SIZE)
        for i, t in ((0, "fast"), (1, "slow"))
    )
    v.to_host += wire.encode(wire.Report(seq, nodes, hot, pressure))


def _report(world: World, vm: str, seq: int, hot_ratio: float, pressure: float) -> None:
    """What a guest agent would send: its nodes, a hot set and a pressure."""
    v = world.vm(vm)
    hot = int(hot_ratio * v.used_pages(0) * PAGE_SIZE + v.used_pages(1) * PAGE_SIZE)
    _claim(world, vm, seq, hot, pressure)


def _fast_mib(world: World, vm: str) -> int:
    return world.vm(vm).requested[0] * PAGE_SIZE // MiB


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _daemon(world: World, clock: FakeClock, cfg: Config = CFG) -> Daemon:
    return Daemon(cfg, EmuHostBackend(world), clock)


def _classed(
    clock: FakeClock,
    *,
    fast_mib: int,
    vm_fast_mib: tuple[int, int],
    classes: dict[str, str],
    reserve_mib: int,
) -> tuple[World, Daemon]:
    """A host with ``fast_mib`` of fast memory and the VMs of ``classes`` (VM ->
    QoS class; fast tier (start, max) ``vm_fast_mib``, 512 MiB slow), each using
    500 MiB; the daemon has ticked once, then each VM was given its class and a
    fast reservation of ``reserve_mib``."""
    world = World(
        host_fast_bytes=fast_mib * MiB, host_slow_bytes=4096 * MiB, clock=clock
    )
    fast, fast_max = vm_fast_mib
    for vm in classes:
        world.add_vm(vm, 2, fast * MiB, 512 * MiB, fast_max * MiB, 1024 * MiB)
        world.spawn(vm, None, npages=500 * MiB // PAGE_SIZE)
    daemon = _daemon(world, clock)
    daemon.tick()
    for vm, cls in classes.items():
        daemon.vm_set(vm, qos_class=cls, reservations={Tier.FAST: reserve_mib * MiB})
    return world, daemon


def test_new_vm_gets_metadata_from_its_allotments(clock: FakeClock) -> None:
    world = _world(clock, vms=1)
    _daemon(world, clock).tick()
    meta = parse_metadata(world.metadata["vm0"])
    assert meta is not None
    fast = meta.tier(Tier.FAST)
    assert fast is not None
    assert (fast.reservation_bytes, fast.limit_bytes) == (128 * MiB, 768 * MiB)


def test_metadata_survives_a_daemon_restart(clock: FakeClock) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    daemon.vm_set("vm0", qos_class="gold", reservations={Tier.FAST: 256 * MiB})
    restarted = _daemon(world, clock)
    restarted.tick()
    vm = restarted.status()["vms"]["vm0"]
    assert vm["class"] == "gold"
    assert vm["tiers"]["fast"]["reservation_bytes"] == 256 * MiB


def test_raised_reservation_is_provisioned_next_tick(clock: FakeClock) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    daemon.vm_set("vm0", reservations={Tier.FAST: 300 * MiB})
    daemon.tick()
    assert _fast_mib(world, "vm0") >= 300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"qos_class": "platinum"}, "unknown", id="class"),
        pytest.param({"reservations": {Tier.FAST: 800 * MiB}}, "reservation", id="res"),
        pytest.param({"limits": {Tier.SLOW: 2048 * MiB}}, "device size", id="limit"),
    ],
)
def test_vm_set_rejects_invalid_settings(
    clock: FakeClock, kwargs: dict[str, object], message: str
) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    with pytest.raises(ConfigError, match=message):
        daemon.vm_set("vm0", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"limits": {Tier.FAST: 512.0 * MiB}}, id="float-limit"),
        pytest.param({"reservations": {Tier.SLOW: MiB + 0.5}}, id="fraction"),
        pytest.param({"limits": {Tier.FAST: True}}, id="bool"),
    ],
)
def test_vm_set_rejects_sizes_that_are_not_int(
    clock: FakeClock, kwargs: dict[str, object]
) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    before = world.metadata["vm0"]
    with pytest.raises(ConfigError, match="whole number of bytes"):
        daemon.vm_set("vm0", **kwargs)  # type: ignore[arg-type]
    assert world.metadata["vm0"] == before


def test_vm_with_float_sizes_in_metadata_is_adopted_after_restart(
    clock: FakeClock,
) -> None:
    world = _world(clock, vms=1)
    _daemon(world, clock).tick()
    # What an older `vm set` with a JSON float wrote: limit_bytes="536870912.0".
    old = world.metadata["vm0"].replace(
        f'limit_bytes="{768 * MiB}"', f'limit_bytes="{512.0 * MiB}"'
    )
    assert old != world.metadata["vm0"]
    world.metadata["vm0"] = old
    restarted = _daemon(world, clock)
    restarted.tick()
    vm = restarted.status()["vms"]["vm0"]
    assert vm["tiers"]["fast"]["limit_bytes"] == 512 * MiB


def test_vm_set_of_unknown_vm_raises(clock: FakeClock) -> None:
    daemon = _daemon(_world(clock, vms=0), clock)
    with pytest.raises(NoSuchDomain):
        daemon.vm_set("ghost", qos_class="gold")


def test_stopped_vm_is_forgotten(clock: FakeClock) -> None:
    world = _world(clock, vms=2)
    daemon = _daemon(world, clock)
    daemon.tick()
    world.remove_vm("vm1")
    daemon.tick()
    assert list(daemon.status()["vms"]) == ["vm0"]


def test_guest_hello_is_answered_and_allotment_sent(clock: FakeClock) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    world.vm("vm0").to_host += wire.encode(wire.Hello("hypertier-guest", "0.1.0"))
    daemon.tick()
    sent = bytes(world.vm("vm0").to_guest).splitlines()
    lines = [wire.decode(x) for x in sent if x]  # b"" before the host hello
    assert isinstance(lines[0], wire.Hello)
    assert lines[1] == wire.Allot(1, 128 * MiB, 128 * MiB)


def test_garbage_guest_is_throttled_without_affecting_others(clock: FakeClock) -> None:
    world = _world(clock, vms=2)
    daemon = _daemon(world, clock)
    daemon.tick()
    world.vm("vm0").to_host += b"{bad\n" * 50
    before = _fast_mib(world, "vm1")
    for seq in range(1, 4):
        _report(world, "vm1", seq, 1.0, 1.0)
        clock.advance(1.0)
        daemon.tick()
    status = daemon.status()["vms"]
    assert status["vm0"]["guest"]["throttled"]
    assert status["vm0"]["tiers"]["fast"]["requested_bytes"] == 128 * MiB
    assert _fast_mib(world, "vm1") > before


def test_guest_cannot_exceed_its_limit(clock: FakeClock) -> None:
    world = _world(clock, fast_mib=8192, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    daemon.vm_set("vm0", limits={Tier.FAST: 160 * MiB})
    for seq in range(1, 10):
        _report(world, "vm0", seq, 1.0, 1.0)
        clock.advance(1.0)
        daemon.tick()
    # It demands ~220 MiB (its whole 200 MiB of used memory, + 10 %).
    assert _fast_mib(world, "vm0") == 160


def test_run_ticks_every_interval_until_stopped(clock: FakeClock) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    clock.on_advance(lambda _dt: daemon.stop() if clock.monotonic() >= 5.0 else None)
    daemon.run()
    assert daemon.status()["ticks"] == 5


def test_reload_applies_new_weights_at_next_tick(clock: FakeClock) -> None:
    daemon = _daemon(_world(clock, vms=1), clock)
    daemon.tick()
    daemon.reload(loads("[classes.standard]\nweight = 7\n"))
    daemon.tick()
    assert daemon.status()["vms"]["vm0"]["weight"] == 7.0


def test_reload_refuses_backend_change(clock: FakeClock) -> None:
    daemon = _daemon(_world(clock, vms=1), clock)
    with pytest.raises(ConfigError, match="restart"):
        daemon.reload(loads('[host]\nbackend = "emu"\n'))


def test_status_reports_host_capacity(clock: FakeClock) -> None:
    daemon = _daemon(_world(clock, vms=1), clock)
    host = daemon.status()["host"]
    assert host["fast_capacity_bytes"] == 1024 * MiB
    assert not host["slow_tier_emulated"]


def test_domain_stats_come_from_the_backend(clock: FakeClock) -> None:
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    assert daemon.domain_stats()["vm0"].remote_tlb_flush is not None


def _three_classes(clock: FakeClock, names: dict[str, str]) -> tuple[World, Daemon]:
    """Gold, silver and bronze VMs (``names``: class -> VM) on 768 MiB of fast
    memory, each starting at 256 MiB of fast memory with 64 reserved."""
    return _classed(
        clock,
        fast_mib=768,
        vm_fast_mib=(256, 768),
        classes={vm: cls for cls, vm in names.items()},
        reserve_mib=64,
    )


@pytest.mark.slow
def test_fast_tier_follows_shifting_demand_by_class_weight(clock: FakeClock) -> None:
    """Three classes whose demands exceed the fast tier, then gold goes idle;
    the fast tier splits 4:2:1, then, once gold has been idle for
    ``policy.demand_release_s``, gold's part goes to the others; pages are
    never lost."""
    names = {"gold": "vm0", "silver": "vm1", "bronze": "vm2"}
    world, daemon = _three_classes(clock, names)
    seq = 0

    def run(ticks: int, load: dict[str, tuple[float, float]]) -> None:
        nonlocal seq
        for _ in range(ticks):
            seq += 1
            for vm, (hot, pressure) in load.items():
                _report(world, vm, seq, hot, pressure)
            clock.advance(1.0)
            daemon.tick()
            world.check_invariants()
            for vm in names.values():
                assert _fast_mib(world, vm) >= 64  # the reservation
                assert world.vm(vm).plugged[0] * PAGE_SIZE // MiB >= 64
            total = sum(world.vm(vm).plugged[0] for vm in names.values())
            assert total * PAGE_SIZE <= 768 * MiB

    busy = (1.0, 1.0)
    run(20, {vm: busy for vm in names.values()})
    fast = {c: _fast_mib(world, vm) for c, vm in names.items()}
    # Every VM demands ~550 MiB: 768 MiB split 4:2:1, to a 2 MiB block.
    assert fast["gold"] == pytest.approx(768 * 4 / 7, abs=2)
    assert fast["silver"] == pytest.approx(768 * 2 / 7, abs=2)
    assert fast["bronze"] == pytest.approx(768 * 1 / 7, abs=2)
    status = daemon.status()["vms"]
    for cls, vm in names.items():
        share = status[vm]["tiers"]["fast"]["share_bytes"] // MiB
        assert fast[cls] == pytest.approx(share, abs=2)

    idle = {names["gold"]: (0.0, 0.0), names["silver"]: busy, names["bronze"]: busy}
    # Gold's demand drops, but counts only once the fall has lasted
    # policy.demand_release_s (30 s): until then it keeps its part.
    run(25, idle)
    assert _fast_mib(world, names["gold"]) == pytest.approx(fast["gold"], abs=2)
    run(25, idle)
    # Gold's demand is now what it has on the slow node (the helper's hot set
    # is the slow node's used memory plus a ratio of the fast node's): below
    # its share, it gets its demand; silver and bronze split the rest 2:1.
    gold = world.vm(names["gold"])
    demand = gold.used_pages(1) * PAGE_SIZE * 1.1 / MiB
    assert _fast_mib(world, names["gold"]) == pytest.approx(demand, abs=4)
    assert _fast_mib(world, names["gold"]) < fast["gold"] - 100
    assert _fast_mib(world, names["silver"]) > fast["silver"]
    assert _fast_mib(world, names["bronze"]) > fast["bronze"]


def test_resizes_per_tick_are_capped(clock: FakeClock) -> None:
    world = _world(clock, fast_mib=8192, vms=6)
    cfg = loads(
        "[policy]\nhost_reserved_bytes = 0\nmin_resize_interval_s = 0\n"
        "max_resizes_per_tick = 3\n"
    )
    daemon = _daemon(world, clock, cfg)
    daemon.tick()
    for vm in world.vms:
        _report(world, vm, 1, 1.0, 1.0)
    clock.advance(1.0)
    before = len(world.oplog)
    daemon.tick()
    assert sum(op[0] == "resize" for op in world.oplog[before:]) == 3


def test_vm_started_between_discoveries_is_found_by_its_event(
    clock: FakeClock,
) -> None:
    world = _world(clock, vms=1)
    cfg = loads("[policy]\nhost_reserved_bytes = 0\ndiscover_every_ticks = 1000\n")
    daemon = _daemon(world, clock, cfg)
    daemon.tick()
    world.add_vm("late", 1, 128 * MiB, 128 * MiB, 256 * MiB, 256 * MiB)
    daemon.tick()
    assert "late" in daemon.status()["vms"]


def _hello(world: World, vm: str) -> None:
    world.vm(vm).to_host += wire.encode(wire.Hello("hypertier-guest", "0.1.0"))


def _sent(world: World, vm: str) -> list[wire.Message]:
    sent = bytes(world.vm(vm).to_guest).splitlines()
    return [wire.decode(x) for x in sent if x]  # b"" before a host hello


def _allots(world: World, vm: str) -> list[wire.Allot]:
    return [m for m in _sent(world, vm) if isinstance(m, wire.Allot)]


def _shrink_announced(clock: FakeClock) -> tuple[World, Daemon]:
    """A VM with a guest agent whose fast limit was just cut from 128 to 64 MiB."""
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    _hello(world, "vm0")
    daemon.tick()
    daemon.vm_set("vm0", reservations={Tier.FAST: 0}, limits={Tier.FAST: 64 * MiB})
    daemon.tick()
    return world, daemon


def test_fast_shrink_waits_for_the_notice_period(clock: FakeClock) -> None:
    """The guest agent hears of the shrink first; the unplug follows the notice."""
    world, daemon = _shrink_announced(clock)
    assert _allots(world, "vm0")[-1].fast_bytes == 64 * MiB
    assert _fast_mib(world, "vm0") == 128
    assert daemon.status()["vms"]["vm0"]["fast_shrink_noticed_s_ago"] == 0.0
    clock.advance(CFG.policy.shrink_notice_s - 1.0)
    daemon.tick()
    assert _fast_mib(world, "vm0") == 128
    clock.advance(1.0)
    daemon.tick()
    assert _fast_mib(world, "vm0") == 64
    assert daemon.status()["vms"]["vm0"]["fast_shrink_noticed_s_ago"] is None


def test_the_guest_hears_the_plugged_size_until_the_unplug_is_done(
    clock: FakeClock,
) -> None:
    world = World(host_fast_bytes=1024 * MiB, host_slow_bytes=4096 * MiB, clock=clock)
    world.add_vm("vm0", 2, 128 * MiB, 128 * MiB, 768 * MiB, 1024 * MiB)
    world.spawn("vm0", None, npages=100 * MiB // PAGE_SIZE)  # room to unplug 64
    daemon = _daemon(world, clock)
    _hello(world, "vm0")
    daemon.tick()
    daemon.vm_set("vm0", reservations={Tier.FAST: 0}, limits={Tier.FAST: 64 * MiB})
    daemon.tick()
    plugged = [m for m in _sent(world, "vm0") if isinstance(m, wire.Plugged)]
    # read again after the allotment of 64: still 128, the unplug is pending
    assert [m.fast_bytes for m in plugged] == [128 * MiB, 128 * MiB]
    for _ in range(int(CFG.policy.shrink_notice_s) + 7):
        clock.advance(1.0)
        daemon.tick()
    assert world.vm("vm0").plugged[0] * PAGE_SIZE == 64 * MiB
    msgs = _sent(world, "vm0")[1:]  # after the host's hello
    plugged = [m for m in msgs if isinstance(m, wire.Plugged)]
    assert [m.fast_bytes for m in plugged] == [128 * MiB, 128 * MiB, 64 * MiB]
    seqs = [m.seq for m in msgs if isinstance(m, wire.Allot | wire.Plugged)]
    assert seqs == sorted(set(seqs))  # one sequence for both kinds
    kinds = [type(m) for m in msgs if isinstance(m, wire.Allot | wire.Plugged)]
    # every allotment is followed by a plugged size read after it
    after = [b for a, b in itertools.pairwise(kinds) if a is wire.Allot]
    assert all(b is wire.Plugged for b in after)
    assert kinds[-1] is wire.Plugged


def test_fast_shrink_goes_ahead_once_the_guest_reports_it_fits(
    clock: FakeClock,
) -> None:
    world, daemon = _shrink_announced(clock)

    def report(seq: int, fast_used_mib: int) -> None:
        clock.advance(0.5)
        nodes = (
            wire.NodeUsage(0, "fast", 128 * MiB, fast_used_mib * MiB),
            wire.NodeUsage(1, "slow", 128 * MiB, (110 - fast_used_mib) * MiB),
        )
        world.vm("vm0").to_host += wire.encode(wire.Report(seq, nodes, 64 * MiB, 0.0))
        daemon.tick()

    report(1, 100)
    assert _fast_mib(world, "vm0") == 128  # 100 MiB used does not fit 64
    report(2, 60)
    assert _fast_mib(world, "vm0") == 64


def test_demand_swinging_inside_the_band_does_not_churn_the_others(
    clock: FakeClock,
) -> None:
    """A VM whose claimed hot set swings within its hysteresis band (here
    between 100 and 90 MiB every 6 s) makes no other VM shrink and grow: its
    falls count once they have lasted ``policy.demand_release_s`` like any
    other (believed at once, each rise back was growth cut for want of
    memory, which released the others' small shrinks)."""
    names = {"gold": "vm0", "silver": "vm1", "bronze": "vm2"}
    world, daemon = _three_classes(clock, names)

    def run(ticks: int, start: int) -> None:
        for t in range(start, start + ticks):
            _report(world, "vm0", t, 1.0, 1.0)
            _report(world, "vm1", t, 1.0, 1.0)
            _claim(world, "vm2", t, (90 if (t // 6) % 2 else 100) * MiB)
            clock.advance(1.0)
            daemon.tick()

    run(60, 1)
    before = {vm: daemon.status()["vms"][vm]["resizes"] for vm in ("vm0", "vm1")}
    fast = {vm: _fast_mib(world, vm) for vm in ("vm0", "vm1")}
    run(120, 61)
    after = {vm: daemon.status()["vms"][vm]["resizes"] for vm in ("vm0", "vm1")}
    assert after == before
    assert {vm: _fast_mib(world, vm) for vm in ("vm0", "vm1")} == fast


def test_a_claim_pulsed_once_a_minute_does_not_churn_the_others(
    clock: FakeClock,
) -> None:
    """A bronze VM that claims its whole memory in one report a minute (5 s)
    and little in the others gains nothing, and after its first pulse makes
    no other VM shrink and grow until its retraction is forgotten (5 minutes):
    its rises wait to be confirmed (agent_host.demand). Before, gold and
    silver resized 40 and 38 times in 1,200 s."""
    names = {"gold": "vm0", "silver": "vm1", "bronze": "vm2"}
    world, daemon = _three_classes(clock, names)
    resizes = []
    for t in range(1, 601):
        if t % 5 == 0:
            _report(world, "vm0", t // 5, 1.0, 1.0)
            _report(world, "vm1", t // 5, 1.0, 1.0)
            _claim(world, "vm2", t // 5, (490 if t % 60 < 5 else 64) * MiB)
        clock.advance(1.0)
        daemon.tick()
        if t in (120, 390):
            resizes.append(
                [daemon.status()["vms"][vm]["resizes"] for vm in ("vm0", "vm1")]
            )
    assert resizes[1] == resizes[0]  # none from 2 to 6.5 minutes
    assert daemon.status()["vms"]["vm2"]["guest"]["retracted_rises"] == 2
    text = render(daemon.status(), {})
    assert 'hypertier_vm_guest_retracted_rises_total{domain="vm2"} 2' in text


@pytest.mark.parametrize(
    ("demotes", "steps"),
    [
        # one notice, then a step each min_resize_interval_s (the notice
        # given again at each step: 10, 25, 40, 55 s)
        pytest.param(False, [(10, 352), (15, 320), (20, 288), (25, 256)], id="stalls"),
        # reporting a little progress that never reaches the step is no answer
        pytest.param(True, [(10, 352), (15, 320), (20, 288), (25, 256)], id="fakes"),
    ],
)
def test_a_notice_left_unanswered_is_not_given_again_until_the_shrink_ends(
    clock: FakeClock, demotes: bool, steps: list[tuple[int, int]]
) -> None:
    """A guest that never reports fitting the size its notice announced
    delays its shrink by one notice, not by one per ``max_step_bytes`` step
    (each step would otherwise wait out the resize interval and then a new
    notice), whatever progress short of it it reports."""
    cfg = loads(
        "[policy]\nhost_reserved_bytes = 0\nmin_resize_interval_s = 5\n"
        "max_step_bytes = 33554432\nshrink_notice_s = 10\n"
    )
    world = World(host_fast_bytes=512 * MiB, host_slow_bytes=4096 * MiB, clock=clock)
    world.add_vm("stall", 2, 384 * MiB, 128 * MiB, 768 * MiB, 1024 * MiB)
    world.add_vm("other", 2, 64 * MiB, 1024 * MiB, 768 * MiB, 1024 * MiB)
    daemon = _daemon(world, clock, cfg)
    _hello(world, "stall")
    daemon.tick()
    for vm in ("stall", "other"):  # adopted with their allotments reserved
        daemon.vm_set(vm, reservations={Tier.FAST: 0})

    node = {"size": 0, "since": 0}  # the faking guest: 1 MiB less a second

    def reports(seq: int) -> None:
        for vm, slow_used, hot in (("stall", 100, 300), ("other", 1000, 900)):
            v = world.vm(vm)
            fast = v.plugged[0] * PAGE_SIZE  # the stalling guest's node is full
            if fast != node["size"] and vm == "stall":
                node.update(size=fast, since=seq)
            done = min(seq - node["since"], 31) * MiB  # never the 32 MiB step
            used = fast - done if demotes and vm == "stall" else fast
            nodes = (
                wire.NodeUsage(0, "fast", fast, used),
                wire.NodeUsage(1, "slow", v.plugged[1] * PAGE_SIZE, slow_used * MiB),
            )
            v.to_host += wire.encode(wire.Report(seq, nodes, hot * MiB, 1.0))

    seen, size = [], _fast_mib(world, "stall")
    for t in range(70):
        reports(t + 1)
        daemon.tick()
        if _fast_mib(world, "stall") != size:
            size = _fast_mib(world, "stall")
            seen.append((t, size))
        clock.advance(1.0)
    # 384 -> 256 MiB (the equal share) in 32 MiB steps
    assert seen == steps
    assert daemon.status()["vms"]["stall"]["fast_shrink_notice_forfeited"] is False


def test_status_shows_how_long_an_unplug_the_guest_cannot_do_is_pending(
    clock: FakeClock,
) -> None:
    """Both of the guest's nodes full: the unplug cannot go, the memory stays
    the VM's, and ``status`` says for how long it has waited."""
    world = World(host_fast_bytes=1024 * MiB, host_slow_bytes=4096 * MiB, clock=clock)
    world.add_vm("vm0", 2, 256 * MiB, 64 * MiB, 768 * MiB, 64 * MiB)
    world.spawn("vm0", None, npages=320 * MiB // PAGE_SIZE)
    daemon = _daemon(world, clock)
    daemon.tick()
    fast = daemon.status()["vms"]["vm0"]["tiers"]["fast"]
    assert fast["unplug_pending_s"] is None
    clock.advance(CFG.policy.shrink_notice_s)  # no agent: past the start's wait
    daemon.vm_set("vm0", reservations={Tier.FAST: 0}, limits={Tier.FAST: 64 * MiB})
    for _ in range(5):
        clock.advance(1.0)
        daemon.tick()
    fast = daemon.status()["vms"]["vm0"]["tiers"]["fast"]
    assert fast["requested_bytes"] == 64 * MiB
    assert fast["current_bytes"] == 256 * MiB
    assert fast["unplug_pending_s"] == pytest.approx(5.0, abs=1.0)


def test_fast_shrink_of_a_vm_without_agent_waits_only_after_a_daemon_start(
    clock: FakeClock,
) -> None:
    """Without a hello the shrink goes at once, once the daemon has run
    ``shrink_notice_s``: before, an agent may not have heard it yet."""
    world = _world(clock, vms=1)
    daemon = _daemon(world, clock)
    daemon.tick()
    daemon.vm_set("vm0", reservations={Tier.FAST: 0}, limits={Tier.FAST: 64 * MiB})
    daemon.tick()
    assert _fast_mib(world, "vm0") == 128
    clock.advance(CFG.policy.shrink_notice_s)
    daemon.tick()
    assert _fast_mib(world, "vm0") == 64


def test_vm_vanishing_during_resize_does_not_fail_the_tick(clock: FakeClock) -> None:
    world = _world(clock, vms=2)
    backend = EmuHostBackend(world)
    daemon = Daemon(CFG, backend, clock)
    for vm in world.vms:
        _hello(world, vm)
    daemon.tick()
    real_resize = backend.resize

    def resize_racing_a_shutdown(vm: str, tier: Tier, size: int) -> None:
        if vm == "vm1" and "vm1" in world.vms:
            world.remove_vm("vm1")
        real_resize(vm, tier, size)

    backend.resize = resize_racing_a_shutdown  # type: ignore[method-assign]
    daemon.vm_set("vm0", reservations={Tier.FAST: 256 * MiB})
    daemon.vm_set("vm1", reservations={Tier.FAST: 256 * MiB})
    daemon.tick()
    assert list(daemon.status()["vms"]) == ["vm0"]
    assert _fast_mib(world, "vm0") == 256
    daemon.tick()
    assert daemon.status()["tick_failures"] == 0


def test_a_lying_guest_is_flagged_and_gains_nothing(clock: FakeClock) -> None:
    """Four VMs demand more fast memory than there is; the bronze one claims
    nodes far beyond what is plugged, all of it used and hot. The reports are
    flagged and their demand ignored; its usage claim, capped by what is
    plugged, holds it at its class share and no more; the others get theirs."""
    world, daemon = _classed(
        clock,
        fast_mib=512,
        vm_fast_mib=(128, 512),
        classes={"vm0": "gold", "vm1": "gold", "vm2": "silver", "vm3": "bronze"},
        reserve_mib=16,
    )
    big = 1 << 39  # within the channel's sanity bound, far beyond what is plugged
    lie = wire.Report(
        0,
        (wire.NodeUsage(0, "fast", big, big), wire.NodeUsage(1, "slow", big, big)),
        2 * big,
        1.0,
    )
    for seq in range(1, 31):
        for vm in ("vm0", "vm1", "vm2"):
            _report(world, vm, seq, 1.0, 1.0)
        world.vm("vm3").to_host += wire.encode(replace(lie, seq=seq))
        clock.advance(1.0)
        daemon.tick()
        world.check_invariants()
    status = daemon.status()["vms"]
    # 512 MiB split 4:4:2:1, to the 2 MiB block.
    for vm, weight in (("vm0", 4), ("vm1", 4), ("vm2", 2), ("vm3", 1)):
        assert _fast_mib(world, vm) == pytest.approx(512 * weight / 11, abs=2)
        share = status[vm]["tiers"]["fast"]["share_bytes"] // MiB
        assert _fast_mib(world, vm) == pytest.approx(share, abs=2)
    liar = status["vm3"]["guest"]
    assert liar["implausible_reports"] == 30
    assert "plugged" in liar["last_implausible"]
    assert status["vm0"]["guest"]["implausible_reports"] == 0
    text = render(daemon.status(), {})
    assert 'hypertier_vm_guest_implausible_reports_total{domain="vm3"} 30' in text
    assert 'hypertier_vm_guest_sessions_total{domain="vm3"} 0' in text
    assert 'hypertier_vm_guest_lines_total{domain="vm3"} 30' in text
