"""HyperTier on the emulator: the real guest and host agents on the emu backends.

Nothing here re-implements HyperTier: each VM gets an ``agent_guest.daemon.Daemon``
over ``EmuGuestBackend`` and the host gets one ``agent_host.daemon.Daemon`` over
``EmuHostBackend``, all on the world's FakeClock, talking over the emulated
virtio-serial channel. Only the time constants are scaled, because an emulated
run lasts seconds of virtual time where a real one lasts hours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from agent_guest import config as guest_config
from agent_guest.daemon import Daemon as GuestDaemon
from agent_host import config as host_config
from agent_host.backend import Tier
from agent_host.daemon import Daemon as HostDaemon
from agent_host.metadata import TieringMetadata, TierMetadata, metadata_xml
from emu.backends.guest import EmuGuestBackend
from emu.backends.host import EmuHostBackend
from emu.machine import World
from emu.policies import VmSpec

__all__ = ["GUEST_TOML", "HOST_TOML", "GuestBackendFactory", "HyperTierPolicy"]

# (world, vm, pmu) -> the backend the VM's guest agent runs on
GuestBackendFactory = Callable[[World, str, str], EmuGuestBackend]

# Time constants scaled to emulated runs of a few virtual seconds, and sizes to
# VMs of a few hundred MiB (a real host keeps 128 MiB of margin over what a guest
# uses; real targets need 64 MiB of RSS, emulated ones, such as the recorded
# traces of 60-70 MiB, 8 MiB). The fast reserve is a share of the fast limit, not
# a fixed size: a fixed 4 MiB was half of an 8 MiB fast tier. A move must pay
# for itself within 0.5 s (`mover.payback_s`, 10 s on a real guest): the default
# matrix's synthetic cells run 2-5 emulated s, its trace cells 18-30 s. Guests
# report 50x as often as on a real host, so the host's channel takes 50x the
# messages a second.
GUEST_TOML = """
[guest]
backend = "emu"
report_interval_s = 0.1
[sampler]
source = "auto"
[mover]
fast_reserve_pct = 2.0
payback_s = 0.5
[targets]
refresh_s = 0.5
min_rss_bytes = 8388608
"""

HOST_TOML = """
[host]
backend = "emu"
[policy]
interval_s = 0.1
min_resize_interval_s = 0.3
shrink_notice_s = 0.3
host_reserved_bytes = 0
safety_margin_bytes = 8388608
report_timeout_s = 1.0
demand_release_s = 1.0
[channel]
max_msgs_per_s = 50.0
"""


class HyperTierPolicy:
    """The ``hypertier`` column: guest agents in every VM plus the host agent.

    ``guest_backend`` builds each guest agent's backend (default: the plain
    ``EmuGuestBackend``; the multi-tenant preset wraps one VM's channel to lie).
    With ``host_agent=False`` only the guest agents run: nothing sizes the tiers.
    ``column`` is the name the runs are reported under.
    """

    name = "hypertier"

    def __init__(
        self,
        guest_toml: str = GUEST_TOML,
        host_toml: str = HOST_TOML,
        pmu: str = "pebs",
        epoch_s: float | None = None,
        *,
        column: str = "hypertier",
        guest_backend: GuestBackendFactory | None = None,
        host_agent: bool = True,
    ) -> None:
        self.name = column
        self._guest_cfg = guest_config.loads(guest_toml, "<emu guest>")
        self._host_cfg = host_config.loads(host_toml, "<emu host>")
        self._pmu = pmu
        self._guest_backend: GuestBackendFactory = guest_backend or EmuGuestBackend
        self._host_agent = host_agent
        self._guests: dict[str, GuestDaemon] = {}
        self._host: HostDaemon | None = None
        self._next_host_s = 0.0
        self._specs: dict[str, VmSpec] = {}

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        self._specs = {s.name: s for s in specs}
        return specs

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        host_backend = EmuHostBackend(world)
        for vm in pids:
            spec = self._specs.get(vm)
            if spec is not None:
                # what `hypertier-host vm define` records for a new VM
                meta = _metadata(spec, world.params.block_bytes)
                world.metadata.setdefault(vm, metadata_xml(meta))
        if self._host_agent:
            self._host = HostDaemon(self._host_cfg, host_backend, world.clock)
        for vm in pids:
            backend = self._guest_backend(world, vm, self._pmu)
            self._guests[vm] = GuestDaemon(self._guest_cfg, backend, world.clock)
        self._next_host_s = world.clock.monotonic()

    def tick(self, world: World, epoch_s: float) -> None:
        for daemon in self._guests.values():
            daemon.tick()
        now = world.clock.monotonic()
        if self._host is not None and now >= self._next_host_s:
            self._host.tick()
            self._next_host_s = now + self._host_cfg.policy.interval_s

    @property
    def host_cfg(self) -> host_config.Config:
        """The host agent's configuration (class weights, policy ratios)."""
        return self._host_cfg

    def status(self) -> dict[str, object]:
        return {vm: dict(d.status()) for vm, d in self._guests.items()}

    def host_status(self) -> dict[str, object]:
        """The host daemon's ``status()`` (empty without a host agent)."""
        return dict(self._host.status()) if self._host is not None else {}

    def close(self) -> None:
        for daemon in self._guests.values():
            daemon.shutdown()
        self._guests.clear()


def _metadata(spec: VmSpec, block: int) -> TieringMetadata:
    """Class, reservations (the spec's fast reservation, else half the initial
    sizes) and limits (the device sizes, whole virtio-mem blocks as the world
    plugs them)."""

    def up(n: int) -> int:
        return -(-n // block) * block

    fast_max = up(max(spec.fast_max_bytes or 0, spec.fast_bytes))
    slow_max = up(max(spec.slow_max_bytes or 0, spec.slow_bytes))
    return TieringMetadata(
        spec.qos_class,
        (
            TierMetadata(
                Tier.FAST,
                spec.fast_bytes // 2
                if spec.fast_reservation_bytes is None
                else spec.fast_reservation_bytes,
                fast_max,
                (0,),
            ),
            TierMetadata(Tier.SLOW, spec.slow_bytes // 2, slow_max, (1,)),
        ),
    )
