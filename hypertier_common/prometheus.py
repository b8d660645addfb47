"""Prometheus exposition for both agents, through prometheus_client.

:func:`base_registry` holds what every HyperTier daemon exports: the process
(CPU seconds, resident and virtual memory, open file descriptors, start time:
prometheus_client's ``ProcessCollector``, read from /proc), the Python build and
``hypertier_<agent>_build_info``. Each agent registers a collector of its own
(custom collectors: the values are read from the daemon at scrape time) and
renders with :func:`render` (text format 0.0.4).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hypertier_common.metrics import DurationHistogram

__all__ = ["base_registry", "histogram_family", "render"]


def histogram_family(hist: DurationHistogram, name: str, doc: str) -> Metric:
    """``hist`` as a Prometheus histogram named ``name`` (seconds)."""
    bounds, cumulative, total = hist.snapshot()
    return HistogramMetricFamily(
        name,
        doc,
        buckets=[(_le(b), float(c)) for b, c in zip(bounds, cumulative, strict=True)],
        sum_value=total,
    )


def _le(bound: float) -> str:
    return repr(float(bound)) if math.isfinite(bound) else "+Inf"


class _BuildInfo(Collector):
    def __init__(self, agent: str, version: str) -> None:
        self._name = f"hypertier_{agent}_build_info"
        self._labels = {"version": version, "python": platform.python_version()}

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily(
            self._name,
            "Constant 1; the labels name the agent's version and Python.",
            labels=list(self._labels),
        )
        g.add_metric(list(self._labels.values()), 1.0)
        yield g


def base_registry(agent: str, version: str) -> CollectorRegistry:
    """A registry with process, Python platform and build-info metrics."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(_BuildInfo(agent, version))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry`` (one scrape)."""
    return generate_latest(registry)
