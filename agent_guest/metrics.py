"""The guest agent's Prometheus metrics (prometheus_client), off by default.

:class:`GuestCollector` reads ``Daemon.status()`` and the epoch-duration histogram
at scrape time; :func:`registry` adds process and build-info metrics. The endpoint
is the shared selector server (:class:`hypertier_common.metrics.MetricsServer`).
This module is imported only when ``metrics.listen`` is set, so a guest without
python3-prometheus-client runs as long as metrics stay off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hypertier_common.metrics import DurationHistogram
from hypertier_common.prometheus import base_registry, histogram_family

__all__ = ["GuestCollector", "registry"]

_COUNTERS = (
    ("epochs", "epochs", "Sampling epochs run."),
    ("samples", "samples", "Access samples read."),
    ("lost", "samples_lost", "Samples the kernel dropped (ring full)."),
    ("throttled", "sampling_throttled", "Times the kernel throttled sampling."),
    ("pages_promoted", "pages_promoted", "Pages moved to the fast tier."),
    ("pages_demoted", "pages_demoted", "Pages moved to the slow tier."),
    ("pages_scanned", "pages_scanned", "Pages whose node was queried."),
    (
        "pages_scan_cached",
        "pages_scan_cached",
        "Pages whose node came from the agent's cache, not a query.",
    ),
    ("dropped_pids", "dropped_processes", "Processes dropped (exited or denied)."),
    ("reports_sent", "reports_sent", "Reports sent to the host agent."),
    ("allots_received", "allotments_received", "Allotments the host agent sent."),
    ("channel_errors", "channel_errors", "Host channel read or write failures."),
    ("wire_errors", "wire_errors", "Malformed messages from the host agent."),
    ("tick_failures", "epoch_failures", "Epochs that failed as a whole."),
)
_GAUGES = (
    ("sample_period", "sample_period", "Events per sample (adapted to the budget)."),
    ("ranges", "ranges", "Address ranges classified."),
    ("hot_bytes", "hot_bytes", "Memory classified hot."),
    ("demand_bytes", "demand_bytes", "Memory serving the demand coverage of accesses."),
    ("allot_fast_bytes", "fast_allotment_bytes", "Fast memory the host allotted."),
    (
        "plugged_fast_bytes",
        "fast_plugged_bytes",
        "Fast device memory plugged, as the host last read it.",
    ),
    (
        "fast_fixed_bytes",
        "fast_fixed_bytes",
        "Fast-node memory beside the device (boot memory the guest sees).",
    ),
)


class GuestCollector(Collector):
    """Custom collector over the daemon's status (read at every scrape)."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]],
        epoch_durations: DurationHistogram | None = None,
    ) -> None:
        self._status = status
        self._epochs = epoch_durations

    def collect(self) -> Iterable[Metric]:
        st = self._status()
        for key, name, doc in _COUNTERS:
            yield CounterMetricFamily(f"hypertier_guest_{name}", doc, value=st[key])
        for key, name, doc in _GAUGES:
            if st[key] is not None:  # no allotment yet: omitted, not zero
                yield GaugeMetricFamily(f"hypertier_guest_{name}", doc, value=st[key])
        yield GaugeMetricFamily(
            "hypertier_guest_processes", "Processes managed.", value=len(st["targets"])
        )
        source = GaugeMetricFamily(
            "hypertier_guest_sampling_source",
            "Constant 1; the label names the access-sampling source in use.",
            labels=["source"],
        )
        source.add_metric([st["source"]], 1.0)
        yield source
        failures = CounterMetricFamily(
            "hypertier_guest_move_failures",
            "Pages move_pages(2) did not move, by errno.",
            labels=["errno"],
        )
        for errno_name, count in sorted(st["failures"].items()):
            failures.add_metric([errno_name], count)
        if failures.samples:
            yield failures
        if self._epochs is not None:
            yield histogram_family(
                self._epochs,
                "hypertier_guest_epoch_duration_seconds",
                "Epoch duration.",
            )


def registry(
    status: Callable[[], Mapping[str, Any]],
    epoch_durations: DurationHistogram | None,
    version: str,
) -> CollectorRegistry:
    """Process, build-info and guest metrics, as one scrape serves them."""
    reg = base_registry("guest", version)
    reg.register(GuestCollector(status, epoch_durations))
    return reg
