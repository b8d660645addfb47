"""The agent's TOML configuration: one frozen dataclass per table, strict ``load``.

Unknown keys and wrong types stop startup naming the full key
(``mover.batch_pgaes: unknown key``); ``dumps`` writes TOML that ``load`` accepts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_guest.backend import BACKENDS
from agent_guest.errors import ConfigError
from hypertier_common.metrics import MetricsError, parse_listen

__all__ = [
    "DEFAULT_CONFIG",
    "FAULT_EVENTS",
    "SOURCES",
    "ClassifyConfig",
    "Config",
    "GuestConfig",
    "MoverConfig",
    "SamplerConfig",
    "TargetsConfig",
    "dumps",
    "load",
    "loads",
]

DEFAULT_CONFIG = "/etc/hypertier/guest.toml"
log = logging.getLogger(__name__)

SOURCES = ("auto", "pebs", "ibs", "page-fault", "soft-dirty")
# Old spellings of sampler.source still accepted, with a warning: name -> new name.
DEPRECATED_SOURCES = {"a-bit": "soft-dirty"}
FAULT_EVENTS = ("software", "tracepoint")


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class GuestConfig:
    backend: str = "linux"
    control_socket: str = "/run/hypertier/guest.sock"
    channel_path: str = "/dev/virtio-ports/org.hypertier.0"
    fast_nodes: list[int] = field(default_factory=list)
    slow_nodes: list[int] = field(default_factory=list)
    report_interval_s: float = 5.0

    def __post_init__(self) -> None:
        _need(
            self.backend in BACKENDS,
            f"guest.backend: {self.backend!r} not one of {sorted(BACKENDS)}",
        )
        _need(bool(self.control_socket), "guest.control_socket: must not be empty")
        both = set(self.fast_nodes) & set(self.slow_nodes)
        _need(not both, f"guest.fast_nodes and guest.slow_nodes share {sorted(both)}")
        _need(
            all(0 <= n < 1024 for n in self.fast_nodes + self.slow_nodes),
            "guest.fast_nodes/slow_nodes: node ids must be in [0, 1023]",
        )
        _need(self.report_interval_s > 0, "guest.report_interval_s must be > 0")


@dataclass(frozen=True)
class SamplerConfig:
    source: str = "auto"
    window_s: float = 1.0
    rate_hz: int = 4000
    cpu_budget_pct: float = 0.5
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
        _need(
            self.fault_event in FAULT_EVENTS,
            f"sampler.fault_event: {self.fault_event!r} not in {list(FAULT_EVENTS)}",
        )
        _need(
            self.source in SOURCES,
            f"sampler.source: {self.source!r} not one of {list(SOURCES)}",
        )
        _need(self.window_s > 0, f"sampler.window_s must be > 0, got {self.window_s}")
        _need(self.rate_hz > 0, f"sampler.rate_hz must be > 0, got {self.rate_hz}")
        _need(
            0 < self.cpu_budget_pct <= 100,
            f"sampler.cpu_budget_pct must be in (0, 100], got {self.cpu_budget_pct}",
        )
        _need(
            1 <= self.min_period <= self.period <= self.max_period,
            "sampler: need 1 <= min_period <= period <= max_period",
        )
        _need(self.ldlat_cycles >= 3, "sampler.ldlat_cycles must be >= 3")
        _need(
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
    max_tracked_pages: int = 16384
    reuse_epochs: int = 3
    reuse_window: int = 4
    demand_coverage: float = 0.9
    demand_decay: float = 0.95

    def __post_init__(self) -> None:
        _need(self.max_ranges >= 1, "classify.max_ranges must be >= 1")
        _need(
            0 < self.demand_coverage <= 1,
            f"classify.demand_coverage must be in (0, 1], got {self.demand_coverage}",
        )
        _need(
            0 <= self.demand_decay < 1,
            f"classify.demand_decay must be in [0, 1), got {self.demand_decay}",
        )
        _need(
            self.min_range_bytes >= 4096 and self.min_range_bytes % 4096 == 0,
            "classify.min_range_bytes must be a positive multiple of 4096",
        )
        _need(
            0 <= self.decay < 1, f"classify.decay must be in [0, 1), got {self.decay}"
        )
        _need(self.split_min_samples > 0, "classify.split_min_samples must be > 0")
        _need(self.split_z >= 0, "classify.split_z must be >= 0")
        _need(self.merge_tolerance >= 0, "classify.merge_tolerance must be >= 0")
        _need(self.hysteresis >= 0, "classify.hysteresis must be >= 0")
        _need(
            self.hot_page_min_samples > 0, "classify.hot_page_min_samples must be > 0"
        )
        _need(self.max_tracked_pages >= 0, "classify.max_tracked_pages must be >= 0")
        _need(
            self.hot_page_min_epochs >= 1, "classify.hot_page_min_epochs must be >= 1"
        )
        _need(
            self.page_cooling_samples >= 1,
            "classify.page_cooling_samples must be >= 1",
        )
        _need(
            1 <= self.reuse_window <= 8,
            f"classify.reuse_window must be in [1, 8], got {self.reuse_window}",
        )
        _need(
            1 <= self.reuse_epochs <= self.reuse_window,
            "classify.reuse_epochs must be in [1, classify.reuse_window], "
            f"got {self.reuse_epochs}",
        )


@dataclass(frozen=True)
class MoverConfig:
    max_bandwidth_mib_s: int = 200
    batch_pages: int = 512
    scan_pages: int = 65536
    fast_reserve_bytes: int = 0
    fast_reserve_pct: float = 2.0
    max_busy_retries: int = 3
    move_shared_pages: bool = True
    cooldown_epochs: int = 4

    def __post_init__(self) -> None:
        _need(self.max_bandwidth_mib_s > 0, "mover.max_bandwidth_mib_s must be > 0")
        _need(
            0 < self.batch_pages <= 65536,
            f"mover.batch_pages must be in [1, 65536], got {self.batch_pages}",
        )
        _need(self.scan_pages >= self.batch_pages, "mover.scan_pages < batch_pages")
        _need(self.fast_reserve_bytes >= 0, "mover.fast_reserve_bytes must be >= 0")
        _need(
            0 <= self.fast_reserve_pct < 100,
            f"mover.fast_reserve_pct must be in [0, 100), got {self.fast_reserve_pct}",
        )
        _need(self.max_busy_retries >= 0, "mover.max_busy_retries must be >= 0")
        _need(self.cooldown_epochs >= 0, "mover.cooldown_epochs must be >= 0")

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
    pids: list[int] = field(default_factory=list)
    cgroup: str = ""
    comm_pattern: str = ""
    refresh_s: float = 10.0

    def __post_init__(self) -> None:
        _need(self.min_rss_bytes >= 0, "targets.min_rss_bytes must be >= 0")
        _need(all(p > 0 for p in self.pids), "targets.pids must be positive")
        _need(self.refresh_s > 0, "targets.refresh_s must be > 0")
        try:
            re.compile(self.comm_pattern)
        except re.error as err:
            raise ConfigError(f"targets.comm_pattern: invalid regex: {err}") from err


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the agent's Prometheus endpoint, "address:port"; off ("")
    by default. The packaged unit runs without a network: see docs/operations.md."""

    listen: str = ""

    def __post_init__(self) -> None:
        if not self.listen:
            return
        try:
            _, port = parse_listen(self.listen)
        except MetricsError as err:
            raise ConfigError(str(err)) from err
        _need(port > 0, f"metrics.listen needs a port from 1, got {self.listen!r}")


@dataclass(frozen=True)
class Config:
    guest: GuestConfig = field(default_factory=GuestConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    mover: MoverConfig = field(default_factory=MoverConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def _check(value: object, typ: object, key: str) -> object:
    """Return ``value`` if it has TOML type ``typ`` (ints accepted for floats)."""
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            ok = math.isfinite(float(value))  # type: ignore[arg-type]
            value = float(value)  # type: ignore[arg-type]
    elif typ is str:
        ok = isinstance(value, str)
    elif typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        ok = isinstance(value, list)
        if ok:
            assert isinstance(value, list)
            value = [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - a field type this loader was not taught
        raise TypeError(f"{key}: unsupported field type {typ!r}")
    if not ok:
        name = getattr(typ, "__name__", str(typ))
        raise ConfigError(f"{key}: expected {name}, got {type(value).__name__}")
    return value


def _build(cls: type[Any], raw: object, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: unknown key")
    kwargs: dict[str, object] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, full)  # type: ignore[arg-type]
        else:
            kwargs[key] = _check(value, typ, full)
    return cls(**kwargs)


def loads(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text. Raises ConfigError."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: {err}") from err
    cfg: Config = _build(Config, raw, "")
    return cfg


def load(path: Path | str) -> Config:
    """Read and validate a config file. Raises ConfigError (also for I/O errors)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    try:
        text = data.decode("utf-8")  # TOML is UTF-8, whatever the locale
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 (byte {data[err.start]:#04x} on line {line}); "
            "TOML files must be UTF-8"
        ) from err
    return loads(text, str(path))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps(cfg: Config) -> str:
    """The effective config (defaults included) as TOML accepted by ``loads``."""
    lines: list[str] = []
    for table in dataclasses.fields(cfg):
        sub = getattr(cfg, table.name)
        lines.append(f"[{table.name}]")
        for f in dataclasses.fields(sub):
            lines.append(f"{f.name} = {_toml_value(getattr(sub, f.name))}")
        lines.append("")
    return "\n".join(lines)
