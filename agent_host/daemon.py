"""The host daemon: discover tiered VMs, read guest reports, size tiers, resize.

One thread; each :meth:`Daemon.tick` reads lifecycle events and domains from the
backend, drains each guest channel, runs :func:`agent_host.policy.plan` and
applies the resizes in the order of :func:`agent_host.policy.order_resizes`
(slow-tier growth first, fast-tier growth last). What the daemon knows of each
VM is one :class:`agent_host.fleet.Fleet`; the settings it must not lose (class,
reservations, limits) live in the domain metadata.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import hypertier_wire as wire
from agent_host.backend import (
    DomainInfo,
    DomainStats,
    EventKind,
    HostBackend,
    HostCapability,
    Tier,
)
from agent_host.channel import GuestChannel
from agent_host.config import Config
from agent_host.errors import HostError, NoSuchDomain
from agent_host.fleet import Fleet, VmState
from agent_host.guestlink import GuestLinks
from agent_host.metadata import (
    TieringMetadata,
    initial_metadata,
    metadata_xml,
    parse_metadata,
    tiered,
)
from agent_host.policy import (
    TIERS,
    PolicyResult,
    Step,
    host_capacity,
    order_resizes,
    plan,
)
from hypertier_common import VERSION
from hypertier_common.clock import Clock
from hypertier_common.errors import ConfigError
from hypertier_common.service import TickStats, tick_loop

__all__ = ["HOST_AGENT", "Daemon"]

log = logging.getLogger(__name__)

HOST_AGENT = "hypertier-host"
_GONE = (EventKind.STOPPED, EventKind.MIGRATED, EventKind.UNDEFINED)


class Daemon:
    """Tier provisioning loop over a :class:`HostBackend` and a :class:`Clock`.

    ``tick()`` is public: the emulator's harness calls it after advancing its
    world. ``run()`` ticks every ``policy.interval_s`` until :meth:`stop`.
    Thread-safe: the control server calls :meth:`status` and :meth:`vm_set`.

    Raises (constructor): HostError when host nodes cannot be read.
    """

    def __init__(self, cfg: Config, backend: HostBackend, clock: Clock) -> None:
        self._cfg = cfg
        self._backend = backend
        self._clock = clock
        # A guest agent says hello again only once it has heard this daemon
        # (Fleet.shrink_due: until then a VM may have an agent mid-demotion).
        self._started_s = clock.monotonic()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._fleet = Fleet()
        self._links = GuestLinks(backend, wire.Hello(HOST_AGENT, VERSION))
        self._pending: Config | None = None
        self._nodes = tuple(backend.host_nodes())
        self._fast_cap, self._slow_cap, self._emulated = host_capacity(self._nodes, cfg)
        if self._emulated:
            log.warning(
                "no CPU-less host node: the slow tier is emulated on node(s) %s",
                ",".join(str(n.node) for n in self._nodes),
            )
        self._caps = backend.capabilities()
        self._since_discover = 0
        self._discovered_s = -math.inf  # when the domains were last read
        self._never_discovered = True
        self._last: PolicyResult | None = None
        self.tick_stats = TickStats()

    @property
    def config(self) -> Config:
        return self._cfg

    # -- loop -----------------------------------------------------------------

    def run(
        self,
        heartbeat: Callable[[], object] | None = None,
        heartbeat_every_s: float = math.inf,
    ) -> None:
        """Tick every ``policy.interval_s`` until :meth:`stop`; tier sizes stay as
        they are on exit (``heartbeat``: see hypertier_common.service.tick_loop)."""
        log.info("host daemon started, %d host node(s)", len(self._nodes))
        tick_loop(
            self.tick,
            lambda: self._cfg.policy.interval_s,
            self._clock,
            self._stop,
            heartbeat,
            heartbeat_every_s,
            self.tick_stats.failed,
        )
        log.info("host daemon stopped; tier sizes stay as they are")

    def stop(self) -> None:
        self._stop.set()

    def reload(self, cfg: Config) -> None:
        """Use ``cfg`` from the next tick; the backend is not changed.

        Raises:
            ConfigError: ``cfg`` changes ``host.backend``/``host.uri`` (restart
                needed) or lacks the slow tier emulation this host needs.
        """
        if (cfg.host.backend, cfg.host.uri) != (
            self._cfg.host.backend,
            self._cfg.host.uri,
        ):
            raise ConfigError("host.backend and host.uri need a restart to change")
        host_capacity(self._nodes, cfg)
        with self._lock:
            self._pending = cfg
        log.info("configuration reloaded")

    # -- one tick -------------------------------------------------------------

    def tick(self) -> None:
        """One round: events, discovery, channels, policy, resizes.

        Domains are re-read from the backend on lifecycle events, on the first
        tick and every ``policy.discover_every_ticks`` ticks (a libvirt domain
        listing costs one XML RPC per VM); in between the daemon's own record of
        the requests stands in, and a shrinking VM counts with its last known
        (larger) ``current``, so capacity is never over-promised.

        Raises:
            HostError: the backend failed as a whole (per-VM failures are logged).
        """
        start = time.perf_counter()
        with self._lock:
            if self._pending is not None:
                self._apply_config(self._pending)
                self._pending = None
            now = self._clock.monotonic()
            changed = self._handle_events()
            self._since_discover += 1
            if (
                changed
                or self._since_discover >= self._cfg.policy.discover_every_ticks
                or self._never_discovered
                or HostCapability.EVENTS not in self._caps
            ):
                self._discover(self._backend.domains())
                self._discovered_s = now
            self._links.read(
                self._fleet, now, self._cfg.policy.report_timeout_s, self._store_report
            )
            resizes = 0
            if self._fleet.states:
                inputs = self._fleet.policy_inputs(
                    now,
                    self._cfg.policy.report_timeout_s,
                    self._fast_cap,
                    self._slow_cap,
                )
                result = plan(inputs, self._cfg.policy)
                resizes = self._apply(result, now)
                self._links.send_allotments(self._fleet, self._discovered_s)
                self._last = result
            self.tick_stats.done(time.perf_counter() - start)
        log.debug(
            "tick %d: %d VM(s), %d resize(s), %.2f ms",
            self.tick_stats.ticks,
            len(self._fleet),
            resizes,
            self.tick_stats.last_ms,
        )

    def _apply_config(self, cfg: Config) -> None:
        self._cfg = cfg
        self._fast_cap, self._slow_cap, self._emulated = host_capacity(self._nodes, cfg)
        for st in self._fleet:
            st.channel.reconfigure(cfg.channel)
            self._fleet.weight[st.row] = cfg.weight(st.meta.qos_class)

    def _handle_events(self) -> bool:
        """Forget VMs that stopped or left; True if any lifecycle event came."""
        events = self._backend.events()
        gone = False
        for event in events:
            if event.kind in _GONE and self._fleet.remove(event.vm):
                gone = True
                log.info("VM %s removed (%s)", event.vm, event.kind.value)
            else:
                log.debug("VM %s: %s", event.vm, event.kind.value)
        if gone:
            self._rebuild()
        return bool(events)

    def _discover(self, domains: Sequence[DomainInfo]) -> None:
        self._since_discover = 0
        self._never_discovered = False
        live: dict[str, DomainInfo] = {d.vm: d for d in domains if tiered(d)}
        fleet = self._fleet
        for vm in [vm for vm in fleet.names() if vm not in live]:
            fleet.remove(vm)
            log.info("VM %s removed (no longer running)", vm)
        for vm, info in live.items():
            st = fleet.get(vm)
            if st is not None:
                st.set_info(info)
                continue
            try:
                meta = self._adopt(info)
            except NoSuchDomain:
                continue
            except HostError as err:
                log.error("cannot adopt VM %s: %s", vm, err)
                continue
            fleet.add(VmState(vm, meta, GuestChannel(vm, self._cfg.channel), info))
            log.info("VM %s added (class %s)", vm, meta.qos_class)
        if fleet.stale:
            self._rebuild()
        else:
            fleet.load_allotments()

    def _rebuild(self) -> None:
        """New fleet arrays after VMs came or went; reports stored again."""
        self._fleet.rebuild(lambda st: self._cfg.weight(st.meta.qos_class))
        for st in self._fleet:
            self._store_report(st)  # after the allotments: checks need them

    def _store_report(self, st: VmState) -> None:
        why = self._fleet.store_report(st, self._cfg.policy)
        if why:
            st.implausible += 1
            st.last_implausible = why
            if st.implausible == 1 or st.implausible % 100 == 0:
                log.warning(
                    "guest of %s reports more than the host provisioned (%s); "
                    "its demand is ignored (%d such report(s))",
                    st.vm,
                    why,
                    st.implausible,
                )

    def _adopt(self, info: DomainInfo) -> TieringMetadata:
        """The VM's metadata; written from its current allotments if absent."""
        raw = self._backend.get_metadata(info.vm)
        meta = parse_metadata(raw) if raw else None
        if meta is not None and all(meta.tier(t) for t in Tier):
            return meta
        meta = initial_metadata(info, meta, self._cfg.policy.default_class)
        # Recorded before anything is changed, so a restart sees the same floors.
        self._backend.set_metadata(info.vm, metadata_xml(meta))
        return meta

    def _apply(self, result: PolicyResult, now: float) -> int:
        """Issue the resizes in the order and within the budget of
        :func:`agent_host.policy.order_resizes`; the rest wait for the next tick."""
        f = self._fleet
        target = np.stack([result.fast.target, result.slow.target])
        f.target = target
        floor = np.stack([result.fast.floor, result.slow.floor])
        ops = order_resizes(
            f.requested, target, floor, self._cfg.policy.max_resizes_per_tick
        )
        wanted = int((target != f.requested).sum())
        if len(ops) < wanted:
            log.debug("resizes over budget: %d deferred", wanted - len(ops))
        policy = self._cfg.policy
        f.track_shrink_notices(
            target, now, policy.min_resize_interval_s, policy.max_step_bytes
        )
        done = 0
        for op in ops:
            st, k, new = f.states[op.row], TIERS.index(op.tier), op.new_bytes
            if st.vm not in f:
                continue
            old = int(f.requested[k, op.row])
            notice_s = self._cfg.policy.shrink_notice_s
            if op.step is Step.FAST_SHRINK and not f.shrink_due(
                st, new, now, notice_s, self._started_s
            ):
                continue
            try:
                self._backend.resize(st.vm, op.tier, new)
            except NoSuchDomain:
                f.remove(st.vm)
                self._since_discover = self._cfg.policy.discover_every_ticks
                log.info("VM %s removed (gone during resize)", st.vm)
                continue
            except HostError as err:
                st.resize_errors += 1
                log.error("resize of %s %s tier failed: %s", st.vm, op.tier.value, err)
                continue
            f.requested[k, op.row] = new
            if op.tier is Tier.FAST:
                st.shrink_notice_s = None
            f.last_resize_s[k, op.row] = now
            st.resizes += 1
            done += 1
            log.info(
                "VM %s %s tier resized %d -> %d MiB",
                st.vm,
                op.tier.value,
                old >> 20,
                new >> 20,
            )
        if f.stale:
            self._rebuild()
        return done

    # -- control API (called from the control server thread) -----------------

    def vm_set(
        self,
        vm: str,
        qos_class: str | None = None,
        reservations: Mapping[Tier, int] | None = None,
        limits: Mapping[Tier, int] | None = None,
    ) -> TieringMetadata:
        """Change a VM's class, reservations or limits; recorded in its metadata.

        Raises:
            NoSuchDomain: ``vm`` is not a running tiered VM.
            ConfigError: unknown class, a size that is not an int, or
                reservation > limit > device size.
        """
        reservations = reservations or {}
        limits = limits or {}
        for kind, sizes in (("reservation", reservations), ("limit", limits)):
            for tier, size in sizes.items():
                # The metadata stores str(size): a float would be written "N.0".
                if not isinstance(size, int) or isinstance(size, bool):
                    raise ConfigError(
                        f"{vm} {tier.value} {kind}_bytes must be a whole number of "
                        f"bytes (int), got {size!r}"
                    )
        with self._lock:
            st = self._fleet.get(vm)
            if st is None:
                raise NoSuchDomain(vm)
            meta = st.with_settings(qos_class, reservations, limits, self._cfg.classes)
            self._backend.set_metadata(vm, metadata_xml(meta))
            st.meta = meta
            self._fleet.load_settings(st, self._cfg.weight(meta.qos_class))
            log.info("VM %s settings changed: class %s", vm, meta.qos_class)
            return meta

    def domain_stats(self) -> dict[str, DomainStats]:
        """KVM and balloon statistics of every tiered VM (None where missing)."""
        with self._lock:
            out: dict[str, DomainStats] = {}
            for vm in self._fleet.names():
                try:
                    out[vm] = self._backend.domain_stats(vm)
                except HostError as err:
                    log.debug("no stats for %s: %s", vm, err)
            return out

    def summary(self) -> str:
        """One line for systemd's status (``systemctl status``)."""
        with self._lock:
            ts = self.tick_stats
            return (
                f"{len(self._fleet)} tiered VM(s), {ts.ticks} ticks "
                f"({ts.failures} failed), last {ts.last_ms:.1f} ms"
            )

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: host tiers, every VM's allotments and guest."""
        with self._lock:
            now = self._clock.monotonic()
            return {
                "version": VERSION,
                "ticks": self.tick_stats.ticks,
                "tick_failures": self.tick_stats.failures,
                "last_tick_ms": round(self.tick_stats.last_ms, 3),
                "backend": self._cfg.host.backend,
                "capabilities": sorted(c.value for c in self._backend.capabilities()),
                "host": {
                    "nodes": [
                        {
                            "node": n.node,
                            "tier": n.tier.value,
                            "total_bytes": n.total_bytes,
                            "free_bytes": n.free_bytes,
                            "has_cpus": n.has_cpus,
                        }
                        for n in self._nodes
                    ],
                    "fast_capacity_bytes": self._fast_cap,
                    "slow_capacity_bytes": self._slow_cap,
                    "slow_overcommit_ratio": self._cfg.policy.slow_overcommit_ratio,
                    "slow_tier_emulated": self._emulated,
                    "fast_overcommitted": bool(
                        self._last and self._last.fast.overcommitted
                    ),
                },
                "vms": {st.vm: self._vm_status(st, now) for st in self._fleet},
            }

    def _vm_status(self, st: VmState, now: float) -> dict[str, Any]:
        last = self._last
        tiers = self._fleet.tier_status(
            st, (last.fast.share, last.slow.share) if last is not None else None, now
        )
        return {
            "class": st.meta.qos_class,
            "weight": self._cfg.weight(st.meta.qos_class),
            "tiers": tiers,
            "resizes": st.resizes,
            "resize_errors": st.resize_errors,
            "fast_shrink_noticed_s_ago": (
                None
                if st.shrink_notice_s is None
                else round(now - st.shrink_notice_s, 3)
            ),
            "fast_shrink_notice_forfeited": st.notice_forfeited,
            "guest": st.guest_status(now),
        }
