"""Both agents on the emulator across restarts: hello sessions, no ping-pong.

A restarted guest agent (seq from 1, a stale partial line in the channel) and a
restarted host daemon are each back in business, reports accepted and the
allotment received, within two guest report intervals.
"""

from __future__ import annotations

import hypertier_wire as wire
from agent_guest import config as guest_config
from agent_guest.daemon import Daemon as GuestDaemon
from agent_host.backend import Tier
from agent_host.config import loads as host_loads
from agent_host.daemon import Daemon as HostDaemon
from agent_host.errors import HostError
from emu.backends.guest import EmuGuestBackend
from emu.backends.host import EmuHostBackend
from emu.clock import FakeClock
from emu.machine import PAGE_SIZE, World

MiB = 1 << 20
VM = "vm0"
GUEST_CFG = guest_config.loads(
    '[guest]\nbackend = "emu"\nreport_interval_s = 5.0\n'
    "[sampler]\nwindow_s = 1.0\n"
    "[mover]\nfast_reserve_bytes = 0\n"
    "[targets]\nmin_rss_bytes = 0\nrefresh_s = 1.0\n"
)
REPORT_INTERVAL_S = GUEST_CFG.guest.report_interval_s
HOST_CFG = host_loads(
    "[policy]\nhost_reserved_bytes = 0\nmin_resize_interval_s = 0\n"
    "max_step_bytes = 134217728\n"
)


class _Host(EmuHostBackend):
    """The emulated host backend, recording every line it sends; while
    ``full``, a send fails as a full socket's does."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.sent: list[bytes] = []
        self.full = False

    def channel_send(self, vm: str, line: bytes) -> None:
        if self.full:
            raise HostError(f"channel of {vm} is full")
        self.sent += [x for x in line.split(b"\n") if x]
        super().channel_send(vm, line)

    def hellos_sent(self) -> int:
        return sum(isinstance(wire.decode(x), wire.Hello) for x in self.sent)


class _Rig:
    """One VM with a process, its guest agent and the host daemon, ticking
    every second of emulated time (guest first, as on a real machine the
    order is arbitrary)."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.world = World(1 << 30, 4 << 30, clock=self.clock, seed=1)
        self.world.add_vm(VM, 2, 128 * MiB, 128 * MiB, 768 * MiB, 1024 * MiB)
        # An idle process: the channel is the point, not placement.
        self.world.spawn(VM, None, npages=64 * MiB // PAGE_SIZE)
        self.guest = self.new_guest()
        self.host_backend, self.host = self.new_host()

    def new_guest(self) -> GuestDaemon:
        return GuestDaemon(GUEST_CFG, EmuGuestBackend(self.world, VM), self.clock)

    def new_host(self) -> tuple[_Host, HostDaemon]:
        backend = _Host(self.world)
        return backend, HostDaemon(HOST_CFG, backend, self.clock)

    def run(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1.0)
            self.guest.tick()
            self.host.tick()

    def run_until(self, done: object, limit_s: float) -> float:
        """Tick until ``done()`` holds; seconds of emulated time it took."""
        t0 = self.clock.monotonic()
        while not done():  # type: ignore[operator]
            assert self.clock.monotonic() - t0 <= limit_s, "not back in time"
            self.run(1)
        return self.clock.monotonic() - t0

    def host_vm(self) -> dict[str, object]:
        vms = self.host.status()["vms"]
        assert isinstance(vms, dict)
        vm: dict[str, object] = vms[VM]
        return vm

    def seq(self) -> int:
        rep = self.host._fleet[VM].channel.latest
        return -1 if rep is None else rep.report.seq


def _allots(guest: GuestDaemon) -> int:
    n = guest.status()["allots_received"]
    assert isinstance(n, int)
    return n


def test_guest_agent_sends_a_newline_before_its_first_hello() -> None:
    rig = _Rig()
    rig.clock.advance(1.0)
    rig.guest.tick()
    sent = bytes(rig.world.vm(VM).to_host)
    assert sent.startswith(b"\n")
    assert isinstance(wire.decode(sent[1:].split(b"\n")[0]), wire.Hello)


def test_restarted_guest_agent_is_back_within_two_report_intervals() -> None:
    rig = _Rig()
    rig.run(60)
    old_seq = rig.seq()
    assert old_seq > 5
    # kill -9 in the middle of a report: half a line stays in the channel.
    stale = wire.encode(
        wire.Report(old_seq + 1, (wire.NodeUsage(0, "fast", 1, 0),), 0, 0.0)
    )
    rig.world.vm(VM).to_host += stale[: len(stale) // 2]
    rig.guest = rig.new_guest()
    took = rig.run_until(
        lambda: 0 < rig.seq() < old_seq and _allots(rig.guest) > 0,
        2 * REPORT_INTERVAL_S,
    )
    assert took <= 2 * REPORT_INTERVAL_S
    chan = rig.host._fleet[VM].channel
    assert chan.sessions == 2
    assert chan.invalid == 1  # the stale fragment, counted once
    assert chan.throttle_count == 0
    guest = rig.host_vm()["guest"]
    assert isinstance(guest, dict)
    assert guest["connected"]
    assert guest["report_age_s"] < REPORT_INTERVAL_S


def test_restarted_host_daemon_is_back_within_two_report_intervals() -> None:
    rig = _Rig()
    rig.run(30)
    before = _allots(rig.guest)
    rig.host_backend, rig.host = rig.new_host()
    took = rig.run_until(
        lambda: (
            rig.host._fleet.get(VM) is not None
            and rig.host._fleet[VM].channel.hello is not None
            and _allots(rig.guest) > before
        ),
        2 * REPORT_INTERVAL_S,
    )
    assert took <= 2 * REPORT_INTERVAL_S
    assert rig.host._fleet[VM].channel.latest is not None


def test_fast_shrink_after_a_host_restart_is_announced_first() -> None:
    rig = _Rig()
    rig.run(30)
    rig.host_backend, rig.host = rig.new_host()
    rig.run(int(2 * REPORT_INTERVAL_S))
    rig.host_backend.sent.clear()
    rig.host.vm_set(VM, reservations={Tier.FAST: 0}, limits={Tier.FAST: 64 * MiB})
    rig.clock.advance(1.0)
    rig.host.tick()
    vm = rig.host_vm()
    assert vm["fast_shrink_noticed_s_ago"] == 0.0
    sent = [wire.decode(x) for x in rig.host_backend.sent]
    assert any(isinstance(m, wire.Allot) and m.fast_bytes == 64 * MiB for m in sent)
    assert rig.world.vm(VM).requested[0] * PAGE_SIZE == 128 * MiB  # not yet


def test_a_restarted_host_does_not_shrink_before_the_guest_can_say_hello() -> None:
    """The new daemon has no hello yet (the guest answers its own hello on its
    next tick): a fast shrink waits up to ``policy.shrink_notice_s`` for one,
    the guest agent may be mid-demotion on the old daemon's notice."""
    rig = _Rig()
    rig.run(30)
    rig.host_backend, rig.host = rig.new_host()
    rig.host.tick()
    rig.host.vm_set(VM, reservations={Tier.FAST: 0}, limits={Tier.FAST: 64 * MiB})
    rig.clock.advance(1.0)
    rig.host.tick()
    assert rig.world.vm(VM).requested[0] * PAGE_SIZE == 128 * MiB
    # the guest says hello; the shrink is announced before it goes
    rig.run_until(lambda: rig.host_vm()["fast_shrink_noticed_s_ago"] is not None, 5)
    assert rig.world.vm(VM).requested[0] * PAGE_SIZE == 128 * MiB


def test_host_restart_costs_one_hello_each_way_and_no_ping_pong() -> None:
    rig = _Rig()
    rig.run(30)
    rig.host_backend, rig.host = rig.new_host()
    rig.run(120)
    # The new host asked once; the guest said hello once; the host answered.
    assert rig.host_backend.hellos_sent() == 2
    assert rig.host._fleet[VM].channel.sessions == 1


def test_both_restarting_together_settle_without_ping_pong() -> None:
    rig = _Rig()
    rig.run(30)
    rig.guest = rig.new_guest()
    rig.host_backend, rig.host = rig.new_host()
    rig.run(120)
    chan = rig.host._fleet[VM].channel
    assert chan.hello is not None
    assert chan.sessions <= 2
    assert rig.host_backend.hellos_sent() <= 3


def test_guest_re_hellos_at_most_once_per_report_interval() -> None:
    """A host that says hello every second gets at most one hello per interval."""
    rig = _Rig()
    rig.run(30)
    before = rig.host._fleet[VM].channel.sessions
    for _ in range(60):
        rig.world.vm(VM).to_guest += wire.encode(wire.Hello("hypertier-host", "x"))
        rig.run(1)
    again = rig.host._fleet[VM].channel.sessions - before
    assert 1 <= again <= 60 / REPORT_INTERVAL_S + 1


def test_host_asks_a_silent_old_guest_at_most_once_per_report_timeout() -> None:
    """An agent that never says hello is asked, but not every tick."""
    rig = _Rig()
    vm = rig.world.vm(VM)
    for seq in range(1, 61):
        nodes = (
            wire.NodeUsage(0, "fast", vm.plugged[0] * PAGE_SIZE, 0),
            wire.NodeUsage(1, "slow", vm.plugged[1] * PAGE_SIZE, 0),
        )
        vm.to_host += wire.encode(wire.Report(seq, nodes, 0, 0.0))
        rig.clock.advance(1.0)
        rig.host.tick()
    timeout = HOST_CFG.policy.report_timeout_s
    assert 1 <= rig.host_backend.hellos_sent() <= 60 / timeout + 1


def test_new_channel_connection_drops_the_partial_line() -> None:
    rig = _Rig()
    rig.run(10)
    chan = rig.host._fleet[VM].channel
    rig.world.vm(VM).to_host += b'{"v":1,"type":"rep'  # then the socket broke
    rig.clock.advance(1.0)
    rig.host.tick()
    rig.host_backend.reconnect_channel(VM)
    seq = rig.seq()
    rig.run(int(2 * REPORT_INTERVAL_S))
    assert rig.seq() > seq
    assert chan.invalid == 0


def test_host_agent_started_late_answers_without_a_hello_round() -> None:
    """The guest's hello waits in the channel until the host agent starts; the
    host's hello then is its answer, not a request."""
    rig = _Rig()
    for _ in range(15):  # 15 s of guest agent alone (under 4 report intervals)
        rig.clock.advance(1.0)
        rig.guest.tick()
    rig.run(60)
    assert rig.host._fleet[VM].channel.sessions == 1
    assert rig.host_backend.hellos_sent() == 1
    assert _allots(rig.guest) > 0


def test_guest_hello_lost_long_ago_does_not_swallow_a_host_request() -> None:
    rig = _Rig()
    for _ in range(60):  # the guest's hello is never read: lost
        rig.clock.advance(1.0)
        rig.guest.tick()
    rig.world.vm(VM).to_host.clear()
    took = rig.run_until(
        lambda: rig.host._fleet.get(VM) is not None and _allots(rig.guest) > 0,
        2 * REPORT_INTERVAL_S,
    )
    assert took <= 2 * REPORT_INTERVAL_S
    assert rig.host._fleet[VM].channel.sessions == 1


def test_an_allotment_that_could_not_go_out_goes_out_next() -> None:
    """A send that fails (the guest's socket buffer full) is not recorded as
    sent: once the channel drains, the guest hears its allotment, rather
    than only at the allotment's next change."""
    rig = _Rig()
    rig.run(10)
    assert _allots(rig.guest) >= 1
    received = _allots(rig.guest)
    rig.host_backend.full = True
    rig.host.vm_set(VM, reservations={Tier.FAST: 256 * MiB})  # a new allotment
    rig.run(10)
    assert _allots(rig.guest) == received
    rig.host_backend.full = False
    rig.run_until(lambda: _allots(rig.guest) > received, 2 * REPORT_INTERVAL_S)
