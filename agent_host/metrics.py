"""The host agent's Prometheus metrics (prometheus_client) and their endpoint.

:class:`HostCollector` reads ``Daemon.status()``, ``Daemon.domain_stats()`` and the
tick-duration histogram at scrape time; VMs are labelled ``domain`` as libvirt's
exporters label them. :func:`registry` adds process and build-info metrics
(:mod:`hypertier_common.prometheus`). :class:`MetricsServer` serves ``/metrics``
and an index page at ``/`` with one thread for all connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent_host.backend import DomainStats
from hypertier_common import metrics as common
from hypertier_common.errors import BackendError
from hypertier_common.metrics import DurationHistogram
from hypertier_common.prometheus import base_registry, histogram_family
from hypertier_common.prometheus import render as render_registry

__all__ = ["HostCollector", "MetricsServer", "registry", "render"]

_ALLOTMENT = (
    ("requested_bytes", "Allotment requested from the guest."),
    ("current_bytes", "Allotment the guest has plugged."),
    ("target_bytes", "Allotment the policy wants."),
    ("share_bytes", "Class-weighted share of the tier's capacity."),
    ("reservation_bytes", "Guaranteed minimum of the tier."),
    ("limit_bytes", "Maximum of the tier."),
)
_CHANNEL = (
    ("lines", "Lines read from the guest channel (blank lines included)."),
    ("blank_lines", "Blank lines read from the guest channel."),
    ("bytes_received", "Bytes read from the guest channel."),
    ("bytes_discarded", "Bytes over channel.max_bytes_per_tick, unread."),
    ("over_budget", "Ticks in which the guest sent more than its budget."),
    ("sessions", "Guest agent sessions (hellos) seen by this daemon."),
    ("invalid_messages", "Invalid guest messages."),
    ("implausible_reports", "Guest reports claiming more than the host sees plugged."),
    ("retracted_rises", "Claims given back within 2 release windows (retractions)."),
)
_STATS = (
    ("remote_tlb_flush", "KVM remote TLB flushes (query-stats)."),
    ("tlb_flush", "KVM vCPU TLB flushes (query-stats)."),
    ("exits", "KVM exits (query-stats)."),
)


class HostCollector(Collector):
    """Custom collector over the daemon's snapshot (read at every scrape)."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]],
        stats: Callable[[], Mapping[str, DomainStats]],
        tick_durations: DurationHistogram | None = None,
    ) -> None:
        self._status = status
        self._stats = stats
        self._ticks = tick_durations

    def collect(self) -> Iterable[Metric]:
        # A family with no sample (no VM reported it yet) is left out whole.
        return [m for m in self._families() if m.samples]

    def _families(self) -> Iterable[Metric]:
        status, stats = self._status(), self._stats()
        yield _counter("hypertier_host_ticks", "Policy ticks run.", status["ticks"])
        yield _counter(
            "hypertier_host_tick_failures",
            "Ticks that failed as a whole.",
            status["tick_failures"],
        )
        if self._ticks is not None:
            yield histogram_family(
                self._ticks, "hypertier_host_tick_duration_seconds", "Tick duration."
            )
        host = status["host"]
        cap = GaugeMetricFamily(
            "hypertier_host_capacity_bytes",
            "Memory the policy may allot per tier (before slow overcommit).",
            labels=["tier"],
        )
        for tier in ("fast", "slow"):
            cap.add_metric([tier], host[f"{tier}_capacity_bytes"])
        yield cap
        yield GaugeMetricFamily(
            "hypertier_host_slow_tier_emulated",
            "1 if no CPU-less host node exists and the slow tier shares fast memory.",
            value=1.0 if host["slow_tier_emulated"] else 0.0,
        )
        yield from self._vms(status["vms"])
        yield from self._domain_stats(stats)

    def _vms(self, vms: Mapping[str, Any]) -> Iterable[Metric]:
        weight = GaugeMetricFamily(
            "hypertier_vm_class_weight",
            "QoS class weight of the VM.",
            labels=["domain", "qos_class"],
        )
        allot = {
            key: GaugeMetricFamily(
                f"hypertier_vm_allotment_{key}", doc, labels=["domain", "tier"]
            )
            for key, doc in _ALLOTMENT
        }
        resizes = CounterMetricFamily(
            "hypertier_vm_resizes", "Resizes issued.", labels=["domain"]
        )
        hot = GaugeMetricFamily(
            "hypertier_vm_guest_hot_bytes", "Guest-reported hot set.", labels=["domain"]
        )
        pressure = GaugeMetricFamily(
            "hypertier_vm_guest_pressure",
            "Guest-reported pressure.",
            labels=["domain"],
        )
        throttled = GaugeMetricFamily(
            "hypertier_vm_guest_throttled",
            "1 while the guest's channel is throttled.",
            labels=["domain"],
        )
        channel = {
            key: CounterMetricFamily(
                f"hypertier_vm_guest_{key}", doc, labels=["domain"]
            )
            for key, doc in _CHANNEL
        }
        for vm, st in sorted(vms.items()):
            weight.add_metric([vm, st["class"]], st["weight"])
            for tier, t in st["tiers"].items():
                for key, family in allot.items():
                    if t[key] is not None:
                        family.add_metric([vm, tier], t[key])
            resizes.add_metric([vm], st["resizes"])
            guest = st["guest"]
            if guest["hot_bytes"] is not None:  # no report yet: omitted, not zero
                hot.add_metric([vm], guest["hot_bytes"])
            if guest["pressure"] is not None:
                pressure.add_metric([vm], guest["pressure"])
            throttled.add_metric([vm], 1.0 if guest["throttled"] else 0.0)
            values = {
                **guest,
                "invalid_messages": guest["invalid"],
            }
            for key, counter in channel.items():
                if values.get(key) is not None:
                    counter.add_metric([vm], values[key])
        yield weight
        yield from allot.values()
        yield resizes
        yield hot
        yield pressure
        yield throttled
        yield from channel.values()

    def _domain_stats(self, stats: Mapping[str, DomainStats]) -> Iterable[Metric]:
        kvm = {
            key: CounterMetricFamily(f"hypertier_vm_{key}", doc, labels=["domain"])
            for key, doc in _STATS
        }
        cpu = CounterMetricFamily(
            "hypertier_vm_cpu_seconds", "vCPU time.", labels=["domain"]
        )
        balloon = GaugeMetricFamily(
            "hypertier_vm_balloon_current_bytes", "Balloon size.", labels=["domain"]
        )
        for vm, s in sorted(stats.items()):
            for key, family in kvm.items():
                value = getattr(s, key)
                if value is not None:  # not exposed on this host: omitted
                    family.add_metric([vm], value)
            if s.cpu_time_s is not None:
                cpu.add_metric([vm], s.cpu_time_s)
            if s.balloon_current_bytes is not None:
                balloon.add_metric([vm], s.balloon_current_bytes)
        yield from kvm.values()
        yield cpu
        yield balloon


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def registry(
    status: Callable[[], Mapping[str, Any]],
    stats: Callable[[], Mapping[str, DomainStats]],
    tick_durations: DurationHistogram | None,
    version: str,
) -> CollectorRegistry:
    """Process, build-info and host metrics, as one scrape serves them."""
    reg = base_registry("host", version)
    reg.register(HostCollector(status, stats, tick_durations))
    return reg


def render(
    status: Mapping[str, Any],
    stats: Mapping[str, DomainStats],
    tick_durations: DurationHistogram | None = None,
) -> str:
    """The host metrics alone (no process metrics) for one snapshot."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HostCollector(lambda: status, lambda: stats, tick_durations))
    return render_registry(reg).decode()


class MetricsServer(common.MetricsServer):
    """:class:`hypertier_common.metrics.MetricsServer` with the host's errors.

    Raises:
        ConfigError: ``listen`` is malformed.
        BackendError: the address cannot be resolved or bound.
    """

    def __init__(
        self, listen: str, source: Callable[[], bytes | str], **options: Any
    ) -> None:
        common.split_listen(listen)
        try:
            super().__init__(listen, source, title="HyperTier host agent", **options)
        except common.MetricsError as err:
            raise BackendError(str(err)) from err
