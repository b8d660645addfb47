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

from agent_guest.backend import BACKENDS
from agent_guest.plan import MoveCost
from hypertier_common import tomlconfig
from hypertier_common.errors import ConfigError
from hypertier_common.metrics import MetricsConfig
from hypertier_common.tomlconfig import check, in_range, require

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
class GuestConfig:
    backend: str = "linux"
    control_socket: str = "/run/hypertier/guest.sock"
    channel_path: str = "/dev/virtio-ports/org.hypertier.0"
    fast_nodes: tuple[int, ...] = ()
    slow_nodes: tuple[int, ...] = ()
    report_interval_s: float = 5.0
    # Keep the agent's own memory (its tables, caches and interpreter heap) on
    # a slow node: the fast tier is the workloads'.
    own_memory_on_slow: bool = True

    def __post_init__(self) -> None:
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
        check("guest", self, positive="report_interval_s")


@dataclass(frozen=True)
class SamplerConfig:
    source: str = "auto"
    window_s: float = 1.0
    rate_hz: int = 4000
    # While the mover keeps finding moves that pay (placement still learning),
    # sample at boost_rate_hz, for boost_epochs epochs after the last such round.
    boost_rate_hz: int = 32000
    boost_epochs: int = 10
    # Once settle_epochs rounds in a row moved nothing, left no promotion
    # candidate waiting and the samples' share on the hot ranges held, sample at
    # settled_rate_hz, at most rate_hz (0: never settle). Only sources whose
    # samples are a draw of the accesses (PEBS, IBS) settle: docs/guest.md.
    settled_rate_hz: int = 250
    settle_epochs: int = 20
    cpu_budget_pct: float = 1.0
    period: int = 1000
    min_period: int = 1
    max_period: int = 1_000_000
    ldlat_cycles: int = 64
    ring_pages: int = 64
    fault_event: str = "software"
    induce_write_faults: bool = True

    def __post_init__(self) -> None:
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
        check(
            "sampler",
            self,
            positive="window_s rate_hz settled_rate_hz",
            non_negative="boost_epochs settle_epochs",
        )
        require(
            self.boost_rate_hz == 0 or self.boost_rate_hz >= self.rate_hz,
            "sampler.boost_rate_hz must be 0 (off) or >= sampler.rate_hz, "
            f"got {self.boost_rate_hz}",
        )
        require(
            0 < self.cpu_budget_pct <= 100,
            f"sampler.cpu_budget_pct must be in (0, 100], got {self.cpu_budget_pct}",
        )
        require(
            1 <= self.min_period <= self.period <= self.max_period,
            "sampler: need 1 <= min_period <= period <= max_period",
        )
        require(self.ldlat_cycles >= 3, "sampler.ldlat_cycles must be >= 3")
        require(
            self.ring_pages > 0 and self.ring_pages & (self.ring_pages - 1) == 0,
            f"sampler.ring_pages must be a power of two, got {self.ring_pages}",
        )


@dataclass(frozen=True)
class ClassifyConfig:
    max_ranges: int = 2048
    min_range_bytes: int = 2 << 20
    decay: float = 0.5
    split_min_samples: float = 8.0
    split_z: float = 3.0
    merge_tolerance: float = 0.25
    hysteresis: float = 0.25
    hot_page_min_samples: float = 3.0
    hot_page_min_epochs: int = 2
    page_cooling_samples: float = 131072.0
    max_tracked_pages: int = 65536
    page_track_samples: int = 8192
    reuse_epochs: int = 3
    reuse_window: int = 4
    demand_coverage: float = 0.9
    demand_decay: float = 0.95

    def __post_init__(self) -> None:
        require(self.max_ranges >= 1, "classify.max_ranges must be >= 1")
        require(
            0 < self.demand_coverage <= 1,
            f"classify.demand_coverage must be in (0, 1], got {self.demand_coverage}",
        )
        require(
            0 <= self.demand_decay < 1,
            f"classify.demand_decay must be in [0, 1), got {self.demand_decay}",
        )
        require(
            self.min_range_bytes >= 4096 and self.min_range_bytes % 4096 == 0,
            "classify.min_range_bytes must be a positive multiple of 4096",
        )
        require(
            0 <= self.decay < 1, f"classify.decay must be in [0, 1), got {self.decay}"
        )
        check(
            "classify",
            self,
            positive="split_min_samples hot_page_min_samples page_track_samples"
            " hot_page_min_epochs",
            non_negative="split_z merge_tolerance hysteresis max_tracked_pages",
        )
        require(
            self.page_cooling_samples >= 1,
            "classify.page_cooling_samples must be >= 1",
        )
        in_range("classify.reuse_window", self.reuse_window, 1, 8)
        require(
            1 <= self.reuse_epochs <= self.reuse_window,
            "classify.reuse_epochs must be in [1, classify.reuse_window], "
            f"got {self.reuse_epochs}",
        )

    @property
    def window_mask(self) -> int:
        """The bits of the last ``reuse_window`` epochs in a sample history byte."""
        return (1 << self.reuse_window) - 1


@dataclass(frozen=True)
class MoverConfig:
    max_bandwidth_mib_s: int = 200
    batch_pages: int = 512
    scan_pages: int = 65536
    fast_reserve_bytes: int = 0
    fast_reserve_pct: float = 2.0
    # A hot page replaces a cold one only if it is this much denser (x 1 +
    # min_gain) beyond sampling noise: near-equals never swap. The same default
    # as classify.hysteresis, which it was until it had a key of its own.
    min_gain: float = 0.25
    # The noise test's z for a resolved page whose range's pages differ beyond
    # Poisson noise (RangeTable.dispersion 1; in proportion below): there a
    # page's own count is evidence, not a lucky draw. Elsewhere the test's 2.
    own_count_z: float = 1.0
    # Moves go only where they pay for themselves within payback_s
    # (plan.paying_prefix): each access moved to the fast tier saves
    # slow_penalty_ns; each move_pages call costs call_cost_us (the TLB flush
    # and refill of the process's vCPUs), each page page_cost_us.
    payback_s: float = 10.0
    slow_penalty_ns: float = 100.0
    call_cost_us: float = 500.0
    page_cost_us: float = 3.0
    max_busy_retries: int = 3
    move_shared_pages: bool = True
    cooldown_epochs: int = 4
    # A page's node, once asked (move_pages status) or moved, is trusted this
    # many epochs before the kernel is asked again (agent_guest/nodecache.py).
    placement_ttl_epochs: int = 8
    # Count the fast nodes' page cache as room for promotions: the kernel
    # reclaims it for them (docs/guest.md, "Page cache is room").
    reclaim_file_pages: bool = True

    def __post_init__(self) -> None:
        in_range("mover.batch_pages", self.batch_pages, 1, 65536)
        require(self.scan_pages >= self.batch_pages, "mover.scan_pages < batch_pages")
        require(
            0 <= self.fast_reserve_pct < 100,
            f"mover.fast_reserve_pct must be in [0, 100), got {self.fast_reserve_pct}",
        )
        check(
            "mover",
            self,
            positive="max_bandwidth_mib_s",
            non_negative="fast_reserve_bytes min_gain own_count_z payback_s"
            " slow_penalty_ns call_cost_us page_cost_us max_busy_retries"
            " cooldown_epochs placement_ttl_epochs",
        )

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
class TargetsConfig:
    min_rss_bytes: int = 64 << 20
    pids: tuple[int, ...] = ()
    cgroup: str = ""
    comm_pattern: str = ""
    refresh_s: float = 10.0

    def __post_init__(self) -> None:
        check("targets", self, positive="refresh_s", non_negative="min_rss_bytes")
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
