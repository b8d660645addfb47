"""daemon on the emulator: targets, host channel (wire), status, reload, loop, exits."""

from __future__ import annotations

import re

import numpy as np
import pytest

import hypertier_wire as wire
from agent_guest import config
from agent_guest.backend import GuestBackend, NumaNode, Tier
from agent_guest.daemon import Daemon
from agent_guest.targets import node_roles, pick_targets
from emu.backends.guest import EmuGuestBackend
from emu.machine import World
from emu.workloads.synthetic import Gups
from hypertier_common.errors import Unsupported

MiB = 1 << 20
CFG = config.loads(
    '[guest]\nbackend = "emu"\nreport_interval_s = 0.1\n'
    "[sampler]\nwindow_s = 0.1\n"
    "[mover]\nfast_reserve_bytes = 0\n"
    "[targets]\nmin_rss_bytes = 0\nrefresh_s = 0.1\n"
)


def _world(procs: int = 1, npages: int = 4096) -> tuple[World, list[int]]:
    w = World(1 << 30, 4 << 30, seed=1)
    w.add_vm("vm", 2, 16 * MiB, 64 * MiB)
    pids = [
        w.spawn("vm", Gups(npages, seed=i), 10**12, comm=f"app{i}")
        for i in range(procs)
    ]
    return w, pids


def _daemon(w: World, cfg: config.Config = CFG) -> tuple[Daemon, EmuGuestBackend]:
    be = EmuGuestBackend(w, "vm")
    return Daemon(cfg, be, w.clock), be


def _run(w: World, d: Daemon, ticks: int, dt: float = 0.1) -> None:
    for _ in range(ticks):
        w.clock.advance(dt)
        d.tick()


def _host_lines(w: World) -> list[wire.Message]:
    vm = w.vm("vm")
    lines = bytes(vm.to_host).splitlines()
    return [wire.decode(line) for line in lines if line]  # b"" before a hello


def test_emu_backend_satisfies_the_protocol() -> None:
    w, _ = _world()
    backend: GuestBackend = EmuGuestBackend(w, "vm")
    assert isinstance(backend, GuestBackend)


def test_first_message_to_the_host_is_hello() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    _run(w, d, 1)
    msgs = _host_lines(w)
    assert isinstance(msgs[0], wire.Hello)
    assert msgs[0].agent == "hypertier-guest"


def test_reports_carry_per_node_usage_and_hot_set() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    _run(w, d, 5)
    reports = [m for m in _host_lines(w) if isinstance(m, wire.Report)]
    assert reports
    last = reports[-1]
    assert [(n.node, n.tier) for n in last.nodes] == [(0, "fast"), (1, "slow")]
    assert last.hot_bytes > 0
    assert 0.0 <= last.pressure <= 1.0


def test_allotment_from_the_host_is_applied() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    w.vm("vm").to_guest += wire.encode(wire.Allot(1, 8 * MiB, 64 * MiB))
    _run(w, d, 1)
    assert d.status()["allot_fast_bytes"] == 8 * MiB


def test_a_bad_line_from_the_host_is_counted_and_skipped() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    vm = w.vm("vm")
    vm.to_guest += b'{"v":1,"type":"allot","seq":-1}\n'
    vm.to_guest += wire.encode(wire.Allot(2, 8 * MiB, 64 * MiB))
    _run(w, d, 1)
    assert d.status()["wire_errors"] == 1
    assert d.status()["allot_fast_bytes"] == 8 * MiB


def test_targets_filter_by_pid_pattern_cgroup_and_size() -> None:
    w, pids = _world(procs=3)
    be = EmuGuestBackend(w, "vm")
    cfg = config.loads(f"[targets]\npids = [{pids[1]}]\n")
    assert pick_targets(cfg, be, 0) == [pids[1]]
    cfg = config.loads('[targets]\nmin_rss_bytes = 0\ncomm_pattern = "app[02]"\n')
    assert pick_targets(cfg, be, 0) == [pids[0], pids[2]]
    cfg = config.loads('[targets]\nmin_rss_bytes = 0\ncgroup = "/machine/vm/app1"\n')
    assert pick_targets(cfg, be, 0) == [pids[1]]
    cfg = config.loads("[targets]\nmin_rss_bytes = 1099511627776\n")
    assert pick_targets(cfg, be, 0) == []
    assert (
        pick_targets(config.loads("[targets]\nmin_rss_bytes = 0\n"), be, pids[0])
        == pids[1:]
    )


def _node(n: int, tier: Tier) -> NumaNode:
    return NumaNode(n, tier, 1 << 30, 1 << 29, tier is Tier.FAST)


def test_node_roles_follow_the_backend_unless_configured() -> None:
    nodes = [_node(0, Tier.FAST), _node(1, Tier.SLOW), _node(2, Tier.SLOW)]
    roles = node_roles(nodes, [], [])
    assert (roles.fast, roles.slow) == ((0,), (1, 2))
    roles = node_roles(nodes, [0, 2], [1])
    assert (roles.fast, roles.slow) == ((0, 2), (1,))


def test_a_process_that_exits_is_forgotten_without_a_tick_failure() -> None:
    w, pids = _world(procs=2)
    d, _ = _daemon(w)
    _run(w, d, 2)
    w.kill("vm", pids[0])
    _run(w, d, 3)
    st = d.status()
    assert st["targets"] == [pids[1]]
    assert st["tick_failures"] == 0


def test_a_target_missing_from_one_proc_scan_is_still_managed() -> None:
    """One failed read of /proc/PID/{statm,comm,cmdline,cgroup} during a scan
    leaves the pid out of processes(); a live process must not be dropped for it
    (on a real 6.12 guest under load the agent stopped managing its target for
    good and never promoted its new hot set)."""
    w, pids = _world(procs=2)
    d, be = _daemon(w)
    _run(w, d, 2)
    real = be.processes
    be.processes = lambda: [p for p in real() if p.pid != pids[0]]  # type: ignore[method-assign]
    _run(w, d, 3)
    assert d.status()["targets"] == sorted(pids)
    be.processes = real  # type: ignore[method-assign]
    w.kill("vm", pids[0])  # gone for real: forgotten
    be.processes = lambda: [p for p in real() if p.pid != pids[0]]  # type: ignore[method-assign]
    _run(w, d, 3)
    assert d.status()["targets"] == [pids[1]]


def test_status_reports_every_counter_the_issue_names() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    _run(w, d, 3)
    st = d.status()
    for key in (
        "source",
        "samples",
        "lost",
        "throttled",
        "pages_promoted",
        "pages_demoted",
        "failures",
        "cpu_s",
        "hot_bytes",
    ):
        assert key in st
    assert st["source"] == "pebs"
    assert isinstance(st["samples"], int)
    assert st["samples"] > 0


def test_reload_swaps_the_config_and_keeps_counters() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    _run(w, d, 2)
    before = d.status()["samples"]
    new = config.loads(
        config.dumps(CFG).replace('source = "auto"', 'source = "soft-dirty"')
    )
    d.reload(new)
    _run(w, d, 2)
    assert d.status()["source"] == "soft-dirty"
    assert d.status()["samples"] >= before


def test_failed_reload_keeps_the_old_config() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    # A source this machine lacks passes the file check but cannot be applied.
    be = EmuGuestBackend(w, "vm", pmu="none")
    d = Daemon(CFG, be, w.clock)
    with pytest.raises(Unsupported, match="pebs"):
        d.reload(config.loads('[sampler]\nsource = "pebs"\n'))
    assert d.config == CFG
    _run(w, d, 2)
    assert d.status()["epochs"] == 2


class _StopAfter:
    """Stops the daemon after ``n`` waits (the loop's clock is the world's)."""

    def __init__(self, w: World, d: Daemon, n: int) -> None:
        self.ticks = 0

        def on_advance(dt: float) -> None:
            self.ticks += 1
            if self.ticks >= n:
                d.stop()

        w.clock.on_advance(on_advance)


def test_run_loops_until_stopped_then_stops_sampling() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    _StopAfter(w, d, 3)
    d.run()
    assert d.status()["epochs"] == 3
    assert w.vm("vm").sampling is None


def test_no_source_is_a_clear_error_not_a_crash() -> None:
    w, _ = _world()
    be = EmuGuestBackend(w, "vm", pmu="none")
    cfg = config.loads('[sampler]\nsource = "pebs"\n')
    with pytest.raises(Unsupported, match="pebs"):
        Daemon(cfg, be, w.clock)


def test_sampling_without_a_pmu_falls_back_to_page_faults() -> None:
    w, _ = _world()
    be = EmuGuestBackend(w, "vm", pmu="none")
    d = Daemon(CFG, be, w.clock)
    _run(w, d, 3)
    assert d.status()["source"] == "page-fault"
    assert d.status()["samples"] > 0


def test_a_stop_before_run_ends_it_without_a_tick() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    d.stop()
    d.run()
    assert d.status()["epochs"] == 0


def test_samples_are_binned_only_for_targets() -> None:
    w, pids = _world(procs=2)
    cfg = config.loads(config.dumps(CFG).replace("pids = []", f"pids = [{pids[0]}]"))
    d, _ = _daemon(w, cfg)
    _run(w, d, 3)
    assert d.status()["targets"] == [pids[0]]
    assert np.isfinite(float(d.status()["cpu_s"]))  # type: ignore[arg-type]


def test_a_dead_host_channel_does_not_stop_placement() -> None:
    """Channel errors are counted and logged once; pages still move."""
    from hypertier_common.errors import BackendError

    w, _ = _world(npages=16384)  # 64 MiB: does not fit the 16 MiB fast node
    d, be = _daemon(w)
    broken = True

    def send(line: bytes) -> None:
        if broken:
            raise BackendError("host channel full; host agent not reading")
        w.vm("vm").to_host += line

    def recv() -> bytes:
        if broken:
            raise BackendError("host channel read: EIO")
        return b""

    be.channel_send = send  # type: ignore[method-assign]
    be.channel_recv = recv  # type: ignore[method-assign]
    _run(w, d, 8)
    st = d.status()
    assert st["tick_failures"] == 0
    assert st["channel_errors"] >= 8
    assert st["pages_promoted"] > 0
    assert st["reports_sent"] == 0
    broken = False
    _run(w, d, 2)
    msgs = _host_lines(w)
    assert isinstance(msgs[0], wire.Hello)  # retried once the channel works
    assert any(isinstance(m, wire.Report) for m in msgs)


def test_the_movers_min_gain_is_its_own_key_not_the_hysteresis() -> None:
    assert config.MoverConfig().min_gain == config.ClassifyConfig().hysteresis
    w, _ = _world()
    cfg = config.loads(
        config.dumps(CFG)
        .replace("hysteresis = 0.25", "hysteresis = 0.0")
        .replace("min_gain = 0.25", "min_gain = 0.5")
    )
    d, _ = _daemon(w, cfg)
    assert d.config.classify.hysteresis == 0.0
    assert d._exchanger._cfg.min_gain == 0.5


def test_samples_a_full_ring_lost_count_toward_the_rate() -> None:
    """A ring too small for the target rate does not drive the period down:
    what overflowed was generated at the period set, so the rate was met."""
    periods = []
    for ring_pages in (64, 1):  # 1 page: ~170 samples per drain, far below 400
        w, _ = _world(npages=16384)
        cfg = config.loads(
            '[guest]\nbackend = "emu"\n[sampler]\nwindow_s = 0.1\nrate_hz = 4000\n'
            f"boost_rate_hz = 0\nring_pages = {ring_pages}\n"
            "[targets]\nmin_rss_bytes = 0\nrefresh_s = 0.1\n"
        )
        d, _ = _daemon(w, cfg)
        _run(w, d, 30)
        periods.append(d.status()["sample_period"])
        if ring_pages == 1:
            assert d.status()["lost"] > 0
    assert periods[1] >= periods[0] / 2, periods


def _fast_used(report: wire.Report) -> int:
    return sum(n.used_bytes for n in report.nodes if n.tier == "fast")


@pytest.mark.parametrize("shrink", [False, True])
def test_a_lowered_allotment_is_answered_by_a_report_once_it_fits(
    shrink: bool,
) -> None:
    """The host unplugs after a report says the fast node fits (or its notice
    runs out): the guest does not keep that report for its next interval."""
    cfg = config.loads(
        '[guest]\nbackend = "emu"\nreport_interval_s = 30.0\n'
        "[sampler]\nwindow_s = 0.1\n"
        "[mover]\nfast_reserve_bytes = 0\n"
        "[targets]\nmin_rss_bytes = 0\nrefresh_s = 0.1\n"
    )
    w, _ = _world(npages=4096)
    d, _ = _daemon(w, cfg)
    vm = w.vm("vm")
    vm.to_guest += wire.encode(wire.Allot(1, 16 * MiB, 64 * MiB))
    _run(w, d, 8)
    before = [m for m in _host_lines(w) if isinstance(m, wire.Report)]
    assert len(before) == 1  # the first, once a history window is in
    assert _fast_used(before[0]) > 8 * MiB
    vm.to_guest += wire.encode(wire.Allot(2, (8 if shrink else 16) * MiB, 64 * MiB))
    _run(w, d, 8)
    after = [m for m in _host_lines(w) if isinstance(m, wire.Report)][1:]
    if not shrink:
        assert after == []
        return
    assert len(after) == 1
    assert _fast_used(after[0]) <= 8 * MiB


def test_a_plugged_size_counts_as_newer_only_until_the_next_allotment() -> None:
    w, _ = _world()
    d, _ = _daemon(w)
    vm = w.vm("vm")
    vm.to_guest += wire.encode(wire.Allot(1, 16 * MiB, 64 * MiB))
    vm.to_guest += wire.encode(wire.Plugged(2, 16 * MiB, 64 * MiB))
    _run(w, d, 1)
    assert d._link.plugged_is_newer
    vm.to_guest += wire.encode(wire.Allot(3, 8 * MiB, 64 * MiB))
    _run(w, d, 1)
    assert not d._link.plugged_is_newer
    assert d.status()["plugged_fast_bytes"] == 16 * MiB


class _OwnMemory(EmuGuestBackend):
    """Records keep_own_memory calls; refuses them with ``refuse``."""

    def __init__(self, world: World, refuse: bool = False) -> None:
        super().__init__(world, "vm")
        self.placed: list[int] = []
        self._refuse = refuse

    def keep_own_memory(self, node: int) -> int:
        self.placed.append(node)
        if self._refuse:
            raise Unsupported("set_mempolicy", "not here")
        return 0


@pytest.mark.parametrize("refuse", [False, True])
def test_the_agents_own_memory_goes_to_the_slow_node_once(refuse: bool) -> None:
    w, _ = _world()
    be = _OwnMemory(w, refuse)
    d = Daemon(CFG, be, w.clock)
    _run(w, d, 3)
    assert be.placed == [1]  # the slow node, once, refused or not
    assert d.status()["epochs"] == 3  # a refusal stops nothing
    assert d.status()["own_memory_node"] == (None if refuse else 1)


def test_the_agents_own_memory_stays_put_when_configured_so() -> None:
    w, _ = _world()
    be = _OwnMemory(w)
    cfg = config.loads(
        '[guest]\nbackend = "emu"\nown_memory_on_slow = false\n'
        "[targets]\nmin_rss_bytes = 0\n"
    )
    _run(w, Daemon(cfg, be, w.clock), 3)
    assert be.placed == []


@pytest.mark.parametrize(("pmu", "settles"), [("pebs", True), ("none", False)])
def test_sampling_settles_only_where_a_sample_is_a_draw_of_the_accesses(
    pmu: str, settles: bool
) -> None:
    """A hot set that fits the fast tier leaves nothing to move: PEBS samples
    settle at the settled rate, page-fault samples (events) never do, and a
    reload that turns settling off is obeyed."""
    w, _ = _world(npages=1024)
    text = re.sub(r"settled_rate_hz = \d+", "settled_rate_hz = 100", config.dumps(CFG))
    text = re.sub(r"settle_epochs = \d+", "settle_epochs = 3", text)
    cfg = config.loads(text)
    d = Daemon(cfg, EmuGuestBackend(w, "vm", pmu=pmu), w.clock)
    _run(w, d, 20, dt=0.01)
    assert d.status()["source"] == ("pebs" if settles else "page-fault")
    assert (d.status()["sample_rate_target_hz"] == 100) is settles
    d.reload(config.loads(re.sub(r"settle_epochs = 3", "settle_epochs = 0", text)))
    _run(w, d, 2, dt=0.01)
    assert d.status()["sample_rate_target_hz"] != 100


def test_other_memory_on_the_fast_node_is_not_room_for_a_target_on_both_nodes() -> None:
    """A target spilled onto the slow node, the fast node half held by another
    process: the budget counts only the target's fast pages as its own, so
    the other process's memory is no room for the target's hot set."""
    w = World(1 << 30, 4 << 30, seed=1)
    w.add_vm("vm", 2, 16 * MiB, 64 * MiB)
    pid = w.spawn("vm", Gups(2048, seed=1), 10**12, comm="other")  # 8 MiB, fast
    w.spawn("vm", Gups(8192, seed=2), 10**12, comm="app")  # 32 MiB: 8 fast
    cfg = config.loads(
        '[guest]\nbackend = "emu"\nreport_interval_s = 0.1\n'
        "[mover]\nfast_reserve_bytes = 0\nfast_reserve_pct = 0\n"
        '[targets]\nmin_rss_bytes = 0\nrefresh_s = 0.1\ncomm_pattern = "app"\n'
    )
    d, be = _daemon(w, cfg)
    _run(w, d, 3)
    budget = d.status()["fast_budget"]
    assert isinstance(budget, dict)
    other_fast = be.node_bytes(pid).get(0, 0)
    assert other_fast >= 6 * MiB
    # the target's RSS (32 MiB) exceeds the node: by RSS it would be 0
    assert budget["unmanaged_bytes"] >= other_fast
    assert budget["room_bytes"] <= 16 * MiB - other_fast
