"""The host daemon: discover tiered VMs, read guest reports, size tiers, resize.

One thread; each :meth:`Daemon.tick` reads lifecycle events and domains from the
backend, drains each guest channel, runs :func:`agent_host.policy.plan` and
applies the resizes (slow-tier growth first, fast-tier growth last). Per-VM
state (class, reservations, limits) lives in the domain metadata.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

import hypertier_wire as wire
from agent_host import domxml
from agent_host.backend import (
    DomainInfo,
    DomainStats,
    EventKind,
    HostBackend,
    HostNode,
    Tier,
)
from agent_host.channel import GuestChannel
from agent_host.clock import Clock
from agent_host.config import Config
from agent_host.errors import ConfigError, HostError, NoSuchDomain
from agent_host.metadata import metadata_xml
from agent_host.policy import PolicyInputs, PolicyResult, TierInputs, plan

__all__ = ["HOST_AGENT", "Daemon", "VmState"]

log = logging.getLogger(__name__)

HOST_AGENT = "hypertier-host"
VERSION = "0.1.0"
_GONE = (EventKind.STOPPED, EventKind.MIGRATED, EventKind.UNDEFINED)


@dataclass
class VmState:
    """What the daemon keeps per VM between ticks (rebuilt from metadata)."""

    vm: str
    meta: domxml.TieringMetadata
    channel: GuestChannel
    info: DomainInfo
    last_resize_s: dict[Tier, float] = field(
        default_factory=lambda: {t: -math.inf for t in Tier}
    )
    target: dict[Tier, int] = field(default_factory=dict)
    sent_allot: tuple[int, int] | None = None
    allot_seq: int = 0
    resizes: int = 0
    resize_errors: int = 0

    def reservation(self, tier: Tier) -> int:
        t = self.meta.tier(tier)
        return t.reservation_bytes if t else 0

    def limit(self, tier: Tier) -> int:
        allot = self.info.allotment(tier)
        dev_max = allot.max_bytes if allot else 0
        t = self.meta.tier(tier)
        return min(t.limit_bytes, dev_max) if t else dev_max


def _capacity(nodes: tuple[HostNode, ...], cfg: Config) -> tuple[int, int, bool]:
    fast = sum(n.total_bytes for n in nodes if n.tier is Tier.FAST)
    slow = sum(n.total_bytes for n in nodes if n.tier is Tier.SLOW)
    fast_cap = cfg.host.fast_capacity_bytes or max(
        0, fast - cfg.policy.host_reserved_bytes
    )
    emulated = slow == 0
    if emulated and not cfg.host.emulate_slow_tier:
        raise ConfigError(
            "host has no slow-tier node and host.emulate_slow_tier is false"
        )
    # Emulated: the slow tier shares the fast nodes' memory (stated in status).
    return fast_cap, (fast_cap if emulated else slow), emulated


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
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._vms: dict[str, VmState] = {}
        self._pending: Config | None = None
        self._nodes = tuple(backend.host_nodes())
        self._fast_cap, self._slow_cap, self._emulated = _capacity(self._nodes, cfg)
        if self._emulated:
            log.warning(
                "no CPU-less host node: the slow tier is emulated on node(s) %s",
                ",".join(str(n.node) for n in self._nodes),
            )
        self._last: PolicyResult | None = None
        self.ticks = 0
        self.tick_failures = 0
        self.last_tick_ms = 0.0

    @property
    def config(self) -> Config:
        return self._cfg

    # -- loop -----------------------------------------------------------------

    def run(self) -> None:
        """Tick until :meth:`stop`; tier sizes stay as they are on exit."""
        log.info("host daemon started, %d host node(s)", len(self._nodes))
        deadline = self._clock.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except HostError as err:
                self.tick_failures += 1
                log.warning("tick failed, continuing: %s", err)
            deadline += self._cfg.policy.interval_s
            self._clock.wait(self._stop, max(0.0, deadline - self._clock.monotonic()))
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
        _capacity(self._nodes, cfg)
        with self._lock:
            self._pending = cfg
        log.info("configuration reloaded")

    # -- one tick -------------------------------------------------------------

    def tick(self) -> None:
        """One round: events, discovery, channels, policy, resizes.

        Raises:
            HostError: the backend failed as a whole (per-VM failures are logged).
        """
        start = time.perf_counter()
        with self._lock:
            if self._pending is not None:
                self._apply_config(self._pending)
                self._pending = None
            now = self._clock.monotonic()
            self._handle_events()
            self._discover(self._backend.domains())
            self._read_channels(now)
            resizes = 0
            if self._vms:
                states = list(self._vms.values())
                result = plan(self._inputs(states, now), self._cfg.policy)
                resizes = self._apply(states, result, now)
                self._send_allotments(states)
                self._last = result
            self.ticks += 1
            self.last_tick_ms = (time.perf_counter() - start) * 1000.0
        log.info(
            "tick %d: %d VM(s), %d resize(s), %.2f ms",
            self.ticks,
            len(self._vms),
            resizes,
            self.last_tick_ms,
        )

    def _apply_config(self, cfg: Config) -> None:
        self._cfg = cfg
        self._fast_cap, self._slow_cap, self._emulated = _capacity(self._nodes, cfg)
        for st in self._vms.values():
            st.channel.reconfigure(cfg.channel)

    def _handle_events(self) -> None:
        for event in self._backend.events():
            if event.kind in _GONE and event.vm in self._vms:
                del self._vms[event.vm]
                log.info("VM %s removed (%s)", event.vm, event.kind.value)
            else:
                log.debug("VM %s: %s", event.vm, event.kind.value)

    def _discover(self, domains: Any) -> None:
        live: dict[str, DomainInfo] = {
            d.vm: d
            for d in domains
            if d.allotment(Tier.FAST) is not None and d.allotment(Tier.SLOW) is not None
        }
        for vm in [vm for vm in self._vms if vm not in live]:
            del self._vms[vm]
            log.info("VM %s removed (no longer running)", vm)
        for vm, info in live.items():
            st = self._vms.get(vm)
            if st is not None:
                st.info = info
                continue
            try:
                meta = self._adopt(info)
            except NoSuchDomain:
                continue
            except HostError as err:
                log.error("cannot adopt VM %s: %s", vm, err)
                continue
            self._vms[vm] = VmState(vm, meta, GuestChannel(vm, self._cfg.channel), info)
            log.info("VM %s added (class %s)", vm, meta.qos_class)

    def _adopt(self, info: DomainInfo) -> domxml.TieringMetadata:
        """The VM's metadata; written from its current allotments if absent."""
        raw = self._backend.get_metadata(info.vm)
        meta = domxml.parse_metadata(raw) if raw else None
        if meta is not None and all(meta.tier(t) for t in Tier):
            return meta
        tiers = []
        for tier in Tier:
            allot = info.allotment(tier)
            assert allot is not None  # filtered in _discover
            tiers.append(
                domxml.TierMetadata(
                    tier, allot.requested_bytes, allot.max_bytes, allot.host_nodes
                )
            )
        qos = (
            meta.qos_class
            if meta and meta.qos_class
            else self._cfg.policy.default_class
        )
        meta = domxml.TieringMetadata(qos, tuple(tiers))
        # Recorded before anything is changed, so a restart sees the same floors.
        self._backend.set_metadata(info.vm, metadata_xml(meta))
        return meta

    def _read_channels(self, now: float) -> None:
        for st in list(self._vms.values()):
            try:
                data = self._backend.channel_recv(st.vm)
            except HostError as err:
                log.debug("channel of %s: %s", st.vm, err)
                continue
            if not data:
                continue
            limits = {t.value: st.limit(t) for t in Tier}
            if st.channel.feed(data, now, limits):
                self._send(st, wire.Hello(HOST_AGENT, VERSION))
                st.sent_allot = None  # a restarted guest gets its allotment again

    def _send(self, st: VmState, msg: wire.Message) -> None:
        try:
            self._backend.channel_send(st.vm, wire.encode(msg))
        except HostError as err:
            log.debug("cannot send to %s: %s", st.vm, err)

    def _inputs(self, states: list[VmState], now: float) -> PolicyInputs:
        fresh_after = now - self._cfg.policy.report_timeout_s
        n = len(states)
        hot = np.full(n, np.nan)
        pressure = np.full(n, np.nan)
        free = np.full(n, np.nan)
        boot = np.zeros(n)
        for i, st in enumerate(states):
            rep = st.channel.latest
            if rep is None or rep.received_s < fresh_after:
                continue
            hot[i] = rep.report.hot_bytes
            pressure[i] = rep.report.pressure
            free[i] = rep.free_bytes
            fast = st.info.allotment(Tier.FAST)
            plugged = fast.current_bytes if fast else 0
            boot[i] = max(0, rep.node_total_bytes("fast") - plugged)
        return PolicyInputs(
            now_s=now,
            weight=np.array([self._cfg.weight(st.meta.qos_class) for st in states]),
            hot_bytes=hot,
            pressure=pressure,
            free_bytes=free,
            fast_boot_bytes=boot,
            fast=self._tier_inputs(states, Tier.FAST),
            slow=self._tier_inputs(states, Tier.SLOW),
            fast_capacity_bytes=self._fast_cap,
            slow_capacity_bytes=self._slow_cap,
        )

    @staticmethod
    def _tier_inputs(states: list[VmState], tier: Tier) -> TierInputs:
        allots = [st.info.allotment(tier) for st in states]
        block = np.array([a.block_bytes if a else 1 for a in allots], np.int64)
        limit = np.array([st.limit(tier) for st in states], np.int64)
        limit = limit // block * block
        res = np.array([st.reservation(tier) for st in states], np.int64)
        res = np.minimum(-(-res // block) * block, limit)
        return TierInputs(
            requested=np.array(
                [a.requested_bytes if a else 0 for a in allots], np.int64
            ),
            current=np.array([a.current_bytes if a else 0 for a in allots], np.int64),
            reservation=res,
            limit=limit,
            block=block,
            last_resize_s=np.array([st.last_resize_s[tier] for st in states]),
        )

    def _apply(self, states: list[VmState], result: PolicyResult, now: float) -> int:
        """Issue the resizes: slow growth, fast shrink, slow shrink, fast growth.

        Slow growth first so pages the fast tier gives up have somewhere to go;
        fast growth last so it uses memory other VMs have released.
        """
        ops: list[tuple[int, VmState, Tier, int]] = []
        for tier, res in ((Tier.FAST, result.fast), (Tier.SLOW, result.slow)):
            for i, st in enumerate(states):
                new = int(res.target[i])
                st.target[tier] = new
                allot = st.info.allotment(tier)
                if allot is None or new == allot.requested_bytes:
                    continue
                grow = new > allot.requested_bytes
                order = {
                    (Tier.SLOW, True): 0,
                    (Tier.FAST, False): 1,
                    (Tier.SLOW, False): 2,
                    (Tier.FAST, True): 3,
                }[(tier, grow)]
                ops.append((order, st, tier, new))
        ops.sort(key=lambda op: op[0])
        done = 0
        for _, st, tier, new in ops:
            if st.vm not in self._vms:
                continue
            allot = st.info.allotment(tier)
            old = allot.requested_bytes if allot else 0
            try:
                self._backend.resize(st.vm, tier, new)
            except NoSuchDomain:
                self._vms.pop(st.vm, None)
                log.info("VM %s removed (gone during resize)", st.vm)
                continue
            except HostError as err:
                st.resize_errors += 1
                log.error("resize of %s %s tier failed: %s", st.vm, tier.value, err)
                continue
            st.last_resize_s[tier] = now
            st.resizes += 1
            done += 1
            log.info(
                "VM %s %s tier resized %d -> %d MiB",
                st.vm,
                tier.value,
                old >> 20,
                new >> 20,
            )
        return done

    def _send_allotments(self, states: list[VmState]) -> None:
        for st in states:
            if st.vm not in self._vms or st.channel.hello is None:
                continue
            allot = (st.target.get(Tier.FAST, 0), st.target.get(Tier.SLOW, 0))
            if allot == st.sent_allot:
                continue
            st.allot_seq += 1
            self._send(st, wire.Allot(st.allot_seq, *allot))
            st.sent_allot = allot

    # -- control API (called from the control server thread) -----------------

    def vm_set(
        self,
        vm: str,
        qos_class: str | None = None,
        reservations: Mapping[Tier, int] | None = None,
        limits: Mapping[Tier, int] | None = None,
    ) -> domxml.TieringMetadata:
        """Change a VM's class, reservations or limits; recorded in its metadata.

        Raises:
            NoSuchDomain: ``vm`` is not a running tiered VM.
            ConfigError: unknown class, or reservation > limit > device size.
        """
        reservations = reservations or {}
        limits = limits or {}
        with self._lock:
            st = self._vms.get(vm)
            if st is None:
                raise NoSuchDomain(vm)
            if qos_class is not None and qos_class not in self._cfg.classes:
                known = sorted(self._cfg.classes)
                raise ConfigError(f"class {qos_class!r} unknown; choose from {known}")
            tiers = []
            for tier in Tier:
                old = st.meta.tier(tier)
                assert old is not None  # _adopt guarantees both tiers
                allot = st.info.allotment(tier)
                dev_max = allot.max_bytes if allot else 0
                res = reservations.get(tier, old.reservation_bytes)
                lim = limits.get(tier, old.limit_bytes)
                if not 0 <= res <= lim <= dev_max:
                    raise ConfigError(
                        f"{vm} {tier.value}: need 0 <= reservation ({res}) <= limit "
                        f"({lim}) <= device size ({dev_max})"
                    )
                tiers.append(replace(old, reservation_bytes=res, limit_bytes=lim))
            meta = replace(
                st.meta, qos_class=qos_class or st.meta.qos_class, tiers=tuple(tiers)
            )
            self._backend.set_metadata(vm, metadata_xml(meta))
            st.meta = meta
            log.info("VM %s settings changed: class %s", vm, meta.qos_class)
            return meta

    def domain_stats(self) -> dict[str, DomainStats]:
        """KVM and balloon statistics of every tiered VM (None where missing)."""
        with self._lock:
            out: dict[str, DomainStats] = {}
            for vm in self._vms:
                try:
                    out[vm] = self._backend.domain_stats(vm)
                except HostError as err:
                    log.debug("no stats for %s: %s", vm, err)
            return out

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: host tiers, every VM's allotments and guest."""
        with self._lock:
            now = self._clock.monotonic()
            return {
                "ticks": self.ticks,
                "tick_failures": self.tick_failures,
                "last_tick_ms": round(self.last_tick_ms, 3),
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
                "vms": {vm: self._vm_status(st, now) for vm, st in self._vms.items()},
            }

    def _vm_status(self, st: VmState, now: float) -> dict[str, Any]:
        tiers: dict[str, Any] = {}
        for tier in Tier:
            allot = st.info.allotment(tier)
            tiers[tier.value] = {
                "requested_bytes": allot.requested_bytes if allot else 0,
                "current_bytes": allot.current_bytes if allot else 0,
                "target_bytes": st.target.get(tier),
                "reservation_bytes": st.reservation(tier),
                "limit_bytes": st.limit(tier),
                "host_nodes": list(allot.host_nodes) if allot else [],
            }
        chan = st.channel
        rep = chan.latest
        return {
            "class": st.meta.qos_class,
            "weight": self._cfg.weight(st.meta.qos_class),
            "tiers": tiers,
            "resizes": st.resizes,
            "resize_errors": st.resize_errors,
            "guest": {
                "connected": chan.hello is not None,
                "report_age_s": round(now - rep.received_s, 3) if rep else None,
                "hot_bytes": rep.report.hot_bytes if rep else None,
                "pressure": rep.report.pressure if rep else None,
                "messages": chan.messages,
                "invalid": chan.invalid,
                "rate_limited": chan.rate_limited,
                "throttled": chan.throttled(now),
                "throttle_count": chan.throttle_count,
                "last_error": chan.last_error,
            },
        }
