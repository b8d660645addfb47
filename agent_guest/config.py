"""The guest agent's TOML configuration: one frozen dataclass per table.

``load`` is strict (hypertier_common.tomlconfig): unknown keys and wrong types
stop startup naming the file and the full key (``mover.batch_pgaes: unknown
key``); ``dumps`` writes TOML that ``load`` accepts.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from agent_guest.backend import BACKENDS
from agent_guest.plan import MoveCost
from hypertier_common import tomlconfig
from hypertier_common.errors import ConfigError
from hypertier_common.metrics import MetricsConfig
from hypertier_common.tomlconfig import NON_NEGATIVE, POSITIVE, Bound, Table, require

__all__ = [
    "DEFAULT_CONFIG",
    "FAULT_EVENTS",
    "SOURCES",
    "ClassifyConfig",
    "Config",
    "GuestConfig",
    "MetricsConfig",
    "MoverConfig",
    "SamplerConfig",
    "TargetsConfig",
    "dumps",
    "load",
    "loads",
]

DEFAULT_CONFIG = Path("/etc/hypertier/guest.toml")
log = logging.getLogger(__name__)

SOURCES = ("auto", "pebs", "ibs", "page-fault", "soft-dirty")
# Old spellings of sampler.source still accepted, with a warning: name -> new name.
DEPRECATED_SOURCES = {"a-bit": "soft-dirty"}
FAULT_EVENTS = ("software", "tracepoint")


@dataclass(frozen=True)
class GuestConfig(Table, table="guest"):
    backend: str = "linux"
    control_socket: str = "/run/hypertier/guest.sock"
    channel_path: str = "/dev/virtio-ports/org.hypertier.0"
    fast_nodes: tuple[int, ...] = ()
    slow_nodes: tuple[int, ...] = ()
    report_interval_s: Annotated[float, POSITIVE] = 5.0
    # Keep the agent's own memory (its tables, caches and interpreter heap) on
    # a slow node: the fast tier is the workloads'.
    own_memory_on_slow: bool = True

    def validate(self) -> None:
        require(
            self.backend in BACKENDS,
            f"guest.backend: {self.backend!r} not one of {sorted(BACKENDS)}",
        )
        require(bool(self.control_socket), "guest.control_socket: must not be empty")
        both = set(self.fast_nodes) & set(self.slow_nodes)
        require(not both, f"guest.fast_nodes and guest.slow_nodes share {sorted(both)}")
        require(
            all(0 <= n < 1024 for n in self.fast_nodes + self.slow_nodes),
            "guest.fast_nodes/slow_nodes: node ids must be in [0, 1023]",
        )


@dataclass(frozen=True)
class SamplerConfig(Table, table="sampler"):
    source: str = "auto"
    window_s: Annotated[float, POSITIVE] = 1.0
    rate_hz: Annotated[int, POSITIVE] = 4000
    # While the mover keeps finding moves that pay (placement still learning),
    # sample at boost_rate_hz, for boost_epochs epochs after the last such round.
    boost_rate_hz: Annotated[int, NON_NEGATIVE] = 32000
    boost_epochs: Annotated[int, NON_NEGATIVE] = 10
    # Once settle_epochs rounds in a row moved nothing, left no promotion
    # candidate waiting and the samples' share on the hot ranges held, sample at
    # settled_rate_hz, at most rate_hz (0: never settle). Only sources whose
    # samples are a draw of the accesses (PEBS, IBS) settle: docs/guest.md.
    settled_rate_hz: Annotated[int, POSITIVE] = 250
    settle_epochs: Annotated[int, NON_NEGATIVE] = 20
    cpu_budget_pct: Annotated[float, Bound(gt=0, le=100)] = 1.0
    period: Annotated[int, POSITIVE] = 1000
    min_period: Annotated[int, POSITIVE] = 1
    max_period: Annotated[int, POSITIVE] = 1_000_000
    ldlat_cycles: Annotated[int, Bound(ge=3)] = 64
    ring_pages: Annotated[int, POSITIVE] = 64
    fault_event: str = "software"
    induce_write_faults: bool = True

    def validate(self) -> None:
        if self.source in DEPRECATED_SOURCES:
            new = DEPRECATED_SOURCES[self.source]
            log.warning(
                "sampler.source = %r is deprecated: it is soft-dirty tracking "
                "(writes only); write %r",
                self.source,
                new,
            )
            object.__setattr__(self, "source", new)
        require(
            self.fault_event in FAULT_EVENTS,
            f"sampler.fault_event: {self.fault_event!r} not in {list(FAULT_EVENTS)}",
        )
        require(
            self.source in SOURCES,
            f"sampler.source: {self.source!r} not one of {list(SOURCES)}",
        )
        require(
            self.boost_rate_hz == 0 or self.boost_rate_hz >= self.rate_hz,
            "sampler.boost_rate_hz must be 0 (off) or >= sampler.rate_hz, "
            f"got {self.boost_rate_hz}",
        )
        require(
            self.min_period <= self.period <= self.max_period,
            "sampler: need 1 <= min_period <= period <= max_period",
        )
        require(
            self.ring_pages & (self.ring_pages - 1) == 0,
            f"sampler.ring_pages must be a power of two, got {self.ring_pages}",
        )


@dataclass(frozen=True)
class ClassifyConfig(Table, table="classify"):
    max_ranges: Annotated[int, Bound(ge=1)] = 2048
    min_range_bytes: Annotated[int, Bound(ge=4096)] = 2 << 20
    decay: Annotated[float, Bound(ge=0, lt=1)] = 0.5
    split_min_samples: Annotated[float, POSITIVE] = 8.0
    split_z: Annotated[float, NON_NEGATIVE] = 3.0
    merge_tolerance: Annotated[float, NON_NEGATIVE] = 0.25
    hysteresis: Annotated[float, NON_NEGATIVE] = 0.25
    hot_page_min_samples: Annotated[float, POSITIVE] = 3.0
    hot_page_min_epochs: Annotated[int, POSITIVE] = 2
    page_cooling_samples: Annotated[float, Bound(ge=1)] = 131072.0
    max_tracked_pages: Annotated[int, NON_NEGATIVE] = 65536
    page_track_samples: Annotated[int, POSITIVE] = 8192
    reuse_epochs: Annotated[int, Bound(ge=1)] = 3
    reuse_window: Annotated[int, Bound(ge=1, le=8)] = 4
    demand_coverage: Annotated[float, Bound(gt=0, le=1)] = 0.9
    demand_decay: Annotated[float, Bound(ge=0, lt=1)] = 0.95

    def validate(self) -> None:
        require(
            self.min_range_bytes % 4096 == 0,
            "classify.min_range_bytes must be a multiple of 4096, "
            f"got {self.min_range_bytes}",
        )
        require(
            self.reuse_epochs <= self.reuse_window,
            "classify.reuse_epochs must be in [1, classify.reuse_window], "
            f"got {self.reuse_epochs}",
        )

    @property
    def window_mask(self) -> int:
        """The bits of the last ``reuse_window`` epochs in a sample history byte."""
        return (1 << self.reuse_window) - 1


@dataclass(frozen=True)
class MoverConfig(Table, table="mover"):
    max_bandwidth_mib_s: Annotated[int, POSITIVE] = 200
    batch_pages: Annotated[int, Bound(ge=1, le=65536)] = 512
    scan_pages: Annotated[int, POSITIVE] = 65536
    fast_reserve_bytes: Annotated[int, NON_NEGATIVE] = 0
    fast_reserve_pct: Annotated[float, Bound(ge=0, lt=100)] = 2.0
    # A hot page replaces a cold one only if it is this much denser (x 1 +
    # min_gain) beyond sampling noise: near-equals never swap. The same default
    # as classify.hysteresis, which it was until it had a key of its own.
    min_gain: Annotated[float, NON_NEGATIVE] = 0.25
    # The noise test's z for a resolved page whose range's pages differ beyond
    # Poisson noise (RangeTable.dispersion 1; in proportion below): there a
    # page's own count is evidence, not a lucky draw. Elsewhere the test's 2.
    own_count_z: Annotated[float, NON_NEGATIVE] = 1.0
    # Moves go only where they pay for themselves within payback_s
    # (plan.paying_prefix): each access moved to the fast tier saves
    # slow_penalty_ns; each move_pages call costs call_cost_us (the TLB flush
    # and refill of the process's vCPUs), each page page_cost_us.
    payback_s: Annotated[float, NON_NEGATIVE] = 10.0
    slow_penalty_ns: Annotated[float, NON_NEGATIVE] = 100.0
    call_cost_us: Annotated[float, NON_NEGATIVE] = 500.0
    page_cost_us: Annotated[float, NON_NEGATIVE] = 3.0
    max_busy_retries: Annotated[int, NON_NEGATIVE] = 3
    move_shared_pages: bool = True
    cooldown_epochs: Annotated[int, NON_NEGATIVE] = 4
    # A page's node, once asked (move_pages status) or moved, is trusted this
    # many epochs before the kernel is asked again (agent_guest/nodecache.py).
    placement_ttl_epochs: Annotated[int, NON_NEGATIVE] = 8
    # Count the fast nodes' page cache as room for promotions: the kernel
    # reclaims it for them (docs/guest.md, "Page cache is room").
    reclaim_file_pages: bool = True

    def validate(self) -> None:
        require(self.scan_pages >= self.batch_pages, "mover.scan_pages < batch_pages")

    def move_cost(self, accesses_per_sample: float) -> MoveCost:
        """The mover's :class:`~agent_guest.plan.MoveCost` when one sample (a
        unit of decayed count) stands for ``accesses_per_sample`` accesses per
        second (0: unknown, every round goes)."""
        return MoveCost(
            self.call_cost_us * 1e3,
            self.page_cost_us * 1e3,
            accesses_per_sample * self.slow_penalty_ns * self.payback_s,
        )

    def reserve_bytes(self, limit_bytes: int) -> int:
        """Fast memory the mover keeps free under a fast limit of ``limit_bytes``."""
        return max(
            self.fast_reserve_bytes, int(limit_bytes * self.fast_reserve_pct / 100)
        )

    def limit_for(self, need_bytes: int) -> int:
        """The smallest fast limit that holds ``need_bytes`` beside the reserve."""
        pct = self.fast_reserve_pct
        extra = math.ceil(need_bytes * pct / (100.0 - pct))
        return need_bytes + max(self.fast_reserve_bytes, extra)


@dataclass(frozen=True)
class TargetsConfig(Table, table="targets"):
    min_rss_bytes: Annotated[int, NON_NEGATIVE] = 64 << 20
    pids: tuple[int, ...] = ()
    cgroup: str = ""
    comm_pattern: str = ""
    refresh_s: Annotated[float, POSITIVE] = 10.0

    def validate(self) -> None:
        require(all(p > 0 for p in self.pids), "targets.pids must be positive")
        try:
            re.compile(self.comm_pattern)
        except re.error as err:
            raise ConfigError(f"targets.comm_pattern: invalid regex: {err}") from err


@dataclass(frozen=True)
class Config:
    guest: GuestConfig = field(default_factory=GuestConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    mover: MoverConfig = field(default_factory=MoverConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def control_socket(self) -> str:
        return self.guest.control_socket


loads = functools.partial(tomlconfig.loads, Config)
"""``loads(text, source="<string>")``: parse and validate TOML text."""
load = functools.partial(tomlconfig.load, Config)
"""``load(path)``: read and validate a file (ConfigError names file and key)."""
dumps = tomlconfig.dumps
