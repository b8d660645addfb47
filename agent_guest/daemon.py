"""The guest daemon: one epoch per ``tick()`` (targets, samples, classify, exchange,
host report), an interruptible ``run()`` loop, reload and shutdown.

Everything it changes in the system is page placement (which stays: it is the
point) and perf sessions (closed on shutdown through ``backend.close()``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from agent_guest.backend import (
    KERNEL_NODE_MIGRATIONS,
    PAGE_SIZE,
    GuestBackend,
    NumaNode,
    ProcessInfo,
    SampleSource,
)
from agent_guest.classify import RangeTable
from agent_guest.config import ClassifyConfig, Config
from agent_guest.errors import NoSuchProcess
from agent_guest.exchange import Exchanger
from agent_guest.hostlink import HostLink
from agent_guest.policy import (
    AccessRate,
    FastBudget,
    FastResidency,
    GrowthWatch,
    SampleBoost,
)
from agent_guest.sampler import Sampler
from agent_guest.selection import Selection, select_hot
from agent_guest.targets import NodeRoles, bytes_on_nodes, node_roles, pick_targets
from hypertier_common import VERSION
from hypertier_common.arrays import I32, U64
from hypertier_common.clock import Clock
from hypertier_common.errors import AccessDenied, AgentError
from hypertier_common.metrics import CpuStopwatch
from hypertier_common.service import TickStats, tick_loop

__all__ = ["Daemon"]

log = logging.getLogger(__name__)


class Daemon:
    """The agent. ``tick()`` is one epoch; the emulator harness calls it directly."""

    def __init__(self, cfg: Config, backend: GuestBackend, clock: Clock) -> None:
        self._backend = backend
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tables: dict[int, RangeTable] = {}
        self._target_infos: list[ProcessInfo] = []
        self._vma_keys: dict[int, int] = {}
        self._targets: list[int] = []
        self._next_refresh = clock.monotonic()
        self._last_cpu = backend.cpu_time_s()
        self._last_t = clock.monotonic()
        self._informed_epochs = 0  # epochs in which samples arrived
        self._access_rate = AccessRate()
        # the mover keeps its fast reserve while the managed processes grow
        self._growth = GrowthWatch(2 * cfg.targets.refresh_s)
        self._residency = FastResidency(cfg.targets.refresh_s)
        self._placement_view: tuple[int | None, int | None, int] = (None, None, -1)
        self.tick_stats = TickStats()  # a tick is an epoch
        self._hot_bytes = self._demand_bytes = 0  # of the last selection
        self._budget: FastBudget | None = None  # the last epoch's
        # guest.own_memory_on_slow: done (or not wanted)
        self._self_placed = not cfg.guest.own_memory_on_slow
        self._own_node: int | None = None  # where it went
        self._link = HostLink(backend, clock, VERSION)
        self._cfg = cfg
        self._sampler, self._exchanger, self._params = self._build(cfg)
        self._boost = SampleBoost(cfg.sampler, self._sampler.source.samples_accesses)

    def _build(self, cfg: Config) -> tuple[Sampler, Exchanger, ClassifyConfig]:
        """The config-dependent parts; raises (GuestError) before anything changes."""
        sampler = Sampler(self._backend, cfg.sampler)
        exchanger = Exchanger(self._backend, cfg.mover, self._clock, self._stop)
        params = cfg.classify
        if sampler.source is SampleSource.PAGE_FAULT and params.reuse_epochs > 1:
            # A hinting fault fires once per page per NUMA-balancing scan, so a
            # page cannot show up epoch after epoch: reuse is not observable.
            log.info(
                "page-fault samples: classify.reuse_epochs %d -> 1", params.reuse_epochs
            )
            params = dataclasses.replace(params, reuse_epochs=1)
        return sampler, exchanger, params

    # ------------------------------------------------------------------ control
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def config(self) -> Config:
        return self._cfg

    def stop(self) -> None:
        """Ask ``run()`` to finish its current tick and shut down (any thread)."""
        self._stop.set()

    def reload(self, cfg: Config) -> None:
        """Swap in ``cfg`` between ticks (any thread).

        Raises:
            GuestError: ``cfg`` cannot be applied (a sample source this machine
                lacks); the old configuration stays.
        """
        with self._lock:
            self._swap(cfg)
        log.info("configuration reloaded")

    def _swap(self, cfg: Config) -> None:
        sampler, exchanger, params = self._build(cfg)
        old = self._sampler
        old.stop()
        sampler.carry_counts(old)
        exchanger.stats = self._exchanger.stats
        exchanger.denied = self._exchanger.denied
        self._cfg, self._params = cfg, params
        self._sampler, self._exchanger = sampler, exchanger
        self._boost.cfg = cfg.sampler
        self._boost.can_settle = sampler.source.samples_accesses
        for t in self._tables.values():
            t.params = params
        self._next_refresh = self._clock.monotonic()

    # --------------------------------------------------------------------- loop
    def run(
        self,
        heartbeat: Callable[[], object] | None = None,
        heartbeat_every_s: float = math.inf,
    ) -> None:
        """Tick every ``sampler.window_s`` until stopped, then shut down
        (``heartbeat``: see hypertier_common.service.tick_loop)."""
        log.info(
            "hypertier-guest %s started, source %s", VERSION, self._sampler.source.value
        )
        tick_loop(
            self.tick,
            lambda: self._cfg.sampler.window_s,
            self._clock,
            self._stop,
            heartbeat,
            heartbeat_every_s,
            self.tick_stats.failed,
        )
        self.shutdown()

    def shutdown(self) -> None:
        """Stop sampling and release the backend (page placement stays)."""
        self._sampler.stop()
        self._backend.close()
        log.info("hypertier-guest stopped")

    # -------------------------------------------------------------------- epoch
    def tick(self) -> None:
        """One epoch: host messages, targets, samples, classification, exchange."""
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        t0 = self._clock.monotonic()
        spent = CpuStopwatch()  # this process's CPU per step, for the debug log
        self._link.receive(self._cfg.guest.report_interval_s)
        fresh = t0 >= self._next_refresh  # the targets' RSS is read this epoch
        if fresh:
            self._refresh_targets()
            self._next_refresh = t0 + self._cfg.targets.refresh_s
        spent.lap("targets")
        batch = self._sampler.read()
        if len(batch):
            self._informed_epochs += 1
        self._note_rate(len(batch), t0)
        spent.lap("read")
        self._bin(batch.pid, batch.addr)
        hot_samples = binned = 0.0
        for table in self._tables.values():
            h, n = table.epoch_samples()
            hot_samples, binned = hot_samples + h, binned + n
            table.end_epoch()
        spent.lap("classify")
        nodes = self._backend.numa_nodes()
        roles = node_roles(
            nodes, self._cfg.guest.fast_nodes, self._cfg.guest.slow_nodes
        )
        by_id = {n.node: n for n in nodes}
        fast = [by_id[n] for n in roles.fast]
        self._check_placement_cache()
        if roles.slow and not self._self_placed:
            self._place_self(max(roles.slow, key=lambda n: by_id[n].free_bytes))
        limit = self._link.fast_limit(sum(n.total_bytes for n in fast))
        used_all = sum(n.used_bytes for n in nodes)
        self._budget = budget = self._fast_budget(fast, used_all, limit, t0, fresh)
        sel = select_hot(self._tables, budget.room_bytes, self._params.hysteresis)
        spent.lap("select")
        self._hot_bytes, self._demand_bytes = sel.hot_bytes, sel.demand_bytes
        promoted = demoted = pending = deferred = 0
        pending_ns = 0.0
        if roles.fast and roles.slow and self._tables:
            fast_node = max(roles.fast, key=lambda n: by_id[n].free_bytes)
            slow_node = max(roles.slow, key=lambda n: by_id[n].free_bytes)
            cpu_before = self._backend.cpu_time_s()
            promoted, demoted = self._exchanger.run(
                self._tables,
                roles.fast,
                roles.slow,
                fast_node,
                slow_node,
                budget.free_pages,
                self._cfg.mover.move_cost(self._accesses_per_count()),
            )
            pending, deferred = self._exchanger.pending, self._exchanger.deferred
            pending_ns = self._exchanger.pending_ns
            self._residency.moved(promoted, demoted)
            # Migration CPU is bounded by the MiB/s limit, not by the sample rate.
            self._last_cpu += self._backend.cpu_time_s() - cpu_before
            for pid in self._exchanger.gone:
                self._forget(pid)
        spent.lap("exchange")
        self._report(nodes, roles, sel, budget, fits=budget.used_bytes <= limit)
        now = self._clock.monotonic()
        cpu = self._backend.cpu_time_s()
        generated = len(batch) + batch.lost
        cpu_s, wall_s = cpu - self._last_cpu, now - self._last_t
        self._boost.sampled(generated, cpu_s, wall_s)
        self._sampler.control.rate_hz = self._boost.after_round(
            promoted, promoted + demoted, hot_samples, binned, pending, deferred,
            pending_ns,
        )  # fmt: skip
        if self._sampler.source is not SampleSource.SOFT_DIRTY:
            # Lost samples were generated at this period too: without them a
            # ring too small for the rate reads as too few samples, and the
            # period falls until every window overflows (page faults under
            # soft-dirty re-arm: 16 k faults at once, an 8 k-sample ring).
            self._sampler.adapt(generated, cpu_s, wall_s)
        self._last_cpu, self._last_t = cpu, now
        self.tick_stats.done(now - t0)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "epoch %d: %d samples (%d lost), %d pids, hot %d MiB, +%d/-%d "
                "pages; CPU ms %s",
                self.tick_stats.ticks,
                len(batch),
                batch.lost,
                len(self._tables),
                sel.hot_bytes >> 20,
                promoted,
                demoted,
                spent,
            )

    def _check_placement_cache(self) -> None:
        """Forget the mover's record of where pages are when something else
        may have moved them: a resize (an unplug migrates what is on the
        blocks it removes) or the kernel's own migrations between nodes."""
        counters = self._backend.counters()
        kernel = sum(counters.get(name, 0) for name in KERNEL_NODE_MIGRATIONS)
        view = (self._link.allot_fast_bytes, self._link.plugged_fast_bytes, kernel)
        if view != self._placement_view:
            self._exchanger.forget_placement()
            _, plugged, moved = self._placement_view
            unplugged = (view[1] or 0) < (plugged or 0)
            if unplugged or moved != kernel:  # the targets' pages changed node
                self._residency.invalidate(at_once=unplugged)
            self._placement_view = view

    def _fast_budget(
        self,
        fast: Sequence[NumaNode],
        used_all: int,
        limit: int,
        now: float,
        fresh: bool,
    ) -> FastBudget:
        """FastResidency.budget; measured only as the RSS is read (``fresh``: a
        stale one looks open), its CPU not the sampler's to account for."""
        rss = sum(p.rss_bytes for p in self._target_infos)
        is_open = FastResidency.is_open(rss, sum(n.used_bytes for n in fast), used_all)
        if fresh and is_open and self._residency.due(now):
            cpu = self._backend.cpu_time_s()
            pids = [p.pid for p in self._target_infos]
            on_fast = bytes_on_nodes(self._backend, pids, [n.node for n in fast])
            cost = self._backend.cpu_time_s() - cpu
            self._last_cpu += cost
            self._residency.measured(on_fast, rss, cost, now)
        return self._residency.budget(
            fast,
            limit,
            rss,
            self._cfg.mover,
            keep_reserve=self._informed_epochs >= self._params.reuse_window
            and self._growth.growing(now),
            unplugging=self._link.fast_fixed_bytes is not None,
            is_open=is_open,
        )

    def _note_rate(self, samples: int, now: float) -> None:
        """``samples`` arrived since the last tick ended, taken at the current
        period (it changes only after this tick's read)."""
        period = self._sampler.control.period
        self._access_rate.note(samples, period, now - self._last_t)

    def _accesses_per_count(self) -> float:
        """Accesses per second that one unit of the tables' decayed counts
        stands for (:class:`AccessRate`; 0 where a sample is no fixed number
        of accesses: page faults, soft-dirty)."""
        if not self._sampler.source.samples_accesses:
            return 0.0
        total = sum(float(t.count.sum()) for t in self._tables.values())
        return self._access_rate.per_count(total)

    def _bin(self, pid: I32, addr: U64) -> None:
        if pid.shape[0] == 0:
            return
        order = np.argsort(pid, kind="stable")
        spid = pid[order]
        uniq, first = np.unique(spid, return_index=True)
        bounds = [*first.tolist(), int(spid.shape[0])]
        for k, p in enumerate(uniq.tolist()):
            table = self._tables.get(p)
            if table is not None:
                table.add_samples(addr[order[bounds[k] : bounds[k + 1]]])

    def _refresh_targets(self) -> None:
        self._target_infos = []
        procs = self._backend.processes()
        pids = [
            p
            for p in pick_targets(self._cfg, self._backend, os.getpid(), procs)
            if p not in self._exchanger.denied
        ]
        infos = {p.pid: p for p in procs}
        for pid in sorted(set(self._tables) - set(pids)):
            if pid not in infos and pid not in self._exchanger.denied:
                # Not listed: a /proc read raced with the process. Only one
                # that is gone (vmas: NoSuchProcess, below) stops being managed.
                pids.append(pid)
            else:
                self._forget(pid)
        for pid in pids:
            try:
                vmas = self._backend.vmas(pid)
            except NoSuchProcess:
                self._forget(pid)
                continue
            except AccessDenied as err:
                log.warning("pid %d: %s; skipping it", pid, err)
                self._exchanger.denied.add(pid)
                self._forget(pid)
                continue
            table = self._tables.get(pid)
            if table is None:
                table = self._tables[pid] = RangeTable(self._params)
                log.info(
                    "managing pid %d (%s)",
                    pid,
                    infos[pid].comm if pid in infos else "?",
                )
            key = hash(tuple((v.start, v.end) for v in vmas))
            if self._vma_keys.get(pid) != key:
                # Mappings changed (or are new): rebuild, carrying densities over.
                table.set_vmas(vmas, self._params.max_ranges // max(1, len(pids)))
                self._vma_keys[pid] = key
        self._target_infos = [infos[p] for p in self._tables if p in infos]
        if sorted(self._tables) != self._targets:
            self._residency.invalidate(at_once=True)
        self._targets = sorted(self._tables)
        self._sampler.start(self._targets)
        self._growth.note(
            {p.pid: p.rss_bytes for p in self._target_infos}, self._clock.monotonic()
        )

    def _place_self(self, node: int) -> None:
        """Once: the agent's own memory to slow ``node`` (guest.own_memory_on_slow).
        A refusal is logged, not fatal: the agent works as well from fast memory."""
        self._self_placed = True
        try:
            pages = self._backend.keep_own_memory(node)
        except AgentError as err:
            log.warning("own memory stays where it is: %s", err)
            return
        self._own_node = node
        log.info(
            "own memory on node %d (%d MiB of private pages; new allocations"
            " prefer it)",
            node,
            pages * PAGE_SIZE >> 20,
        )

    def _forget(self, pid: int) -> None:
        self._vma_keys.pop(pid, None)
        if self._tables.pop(pid, None) is not None:
            log.info("stopped managing pid %d", pid)
        self._target_infos = [p for p in self._target_infos if p.pid != pid]

    # ------------------------------------------------------------------ report
    def _report(
        self,
        nodes: Sequence[NumaNode],
        roles: NodeRoles,
        sel: Selection,
        budget: FastBudget,
        fits: bool = True,
    ) -> None:
        """Tell the host what this guest uses and demands (docs/wire-protocol.md),
        every ``guest.report_interval_s``, and at once when the fast nodes
        (``fits``) are back under a lowered allotment.

        ``hot_bytes`` is the fast memory the guest would fill if it had room:
        the targets' demand (whatever the fast tier holds now) plus memory on
        the fast node the agent does not manage plus the mover's reserve;
        ``pressure`` the part of that demand the fast node's room for the
        targets (``budget.room_bytes``) leaves unmet.
        """
        if self.tick_stats.ticks < self._params.reuse_window:
            # Nothing before a full history window: a first report of "no hot
            # set" would have the host shrink a VM whose agent just started.
            return
        if not self._link.report_due(self._cfg.guest.report_interval_s, fits):
            return
        demand = sel.demand_bytes
        unmet = max(0, demand - budget.room_bytes)
        pressure = unmet / demand if demand else 0.0
        # The fast node must also hold the reserve the mover keeps free there,
        # or an allotment of exactly the demand leaves part of the hot set out.
        wanted = self._cfg.mover.limit_for(demand + budget.unmanaged_bytes)
        stats = self._exchanger.stats
        self._link.report(
            nodes, roles.fast, wanted, pressure, stats.promoted + stats.demoted
        )

    # ------------------------------------------------------------------- status
    def summary(self) -> str:
        """One line for systemd's status (``systemctl status``)."""
        with self._lock:
            stats = self._exchanger.stats
            return (
                f"source {self._sampler.source.value}, {len(self._targets)} "
                f"process(es), {self.tick_stats.ticks} epochs, pages "
                f"+{stats.promoted}/-{stats.demoted}, "
                f"hot {self._hot_bytes >> 20} MiB"
            )

    def status(self) -> Mapping[str, object]:
        """Counters for ``hypertier-guest status`` (JSON-serialisable)."""
        with self._lock:
            return self._status()

    def _status(self) -> Mapping[str, object]:
        stats = self._exchanger.stats
        return {
            "version": VERSION,
            "source": self._sampler.source.value,
            "capabilities": sorted(c.value for c in self._backend.capabilities()),
            "sample_period": self._sampler.control.period,
            "sample_rate_target_hz": self._sampler.control.rate_hz,
            "epochs": self.tick_stats.ticks,
            "targets": list(self._targets),
            "ranges": sum(len(t) for t in self._tables.values()),
            "samples": self._sampler.samples,
            "lost": self._sampler.lost,
            "throttled": self._sampler.throttled,
            "pages_promoted": stats.promoted,
            "pages_demoted": stats.demoted,
            "pages_scanned": stats.scanned,
            "pages_scan_cached": stats.scan_cached,
            "failures": dict(stats.failures),
            "dropped_pids": stats.dropped_pids,
            "cpu_s": self._backend.cpu_time_s(),
            "hot_bytes": self._hot_bytes,
            "demand_bytes": self._demand_bytes,
            "allot_fast_bytes": self._link.allot_fast_bytes,
            "plugged_fast_bytes": self._link.plugged_fast_bytes,
            "fast_fixed_bytes": self._link.fast_fixed_bytes,
            "fast_budget": None
            if self._budget is None
            else dataclasses.asdict(self._budget),
            "fast_short_pages": self._exchanger.short_pages,
            "own_memory_node": self._own_node,
            "reports_sent": self._link.counters.reports_sent,
            "allots_received": self._link.counters.allots_received,
            "channel_errors": self._link.counters.channel_errors,
            "wire_errors": self._link.counters.wire_errors,
            "tick_failures": self.tick_stats.failures,
            "last_tick_ms": round(self.tick_stats.last_ms, 3),
        }
