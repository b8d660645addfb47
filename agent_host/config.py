"""The host agent's TOML configuration: one frozen dataclass per table (tomllib).

``load(path)`` is strict (hypertier_common.tomlconfig: unknown keys and wrong
types name the file and the full key); ``dumps(cfg)`` writes the effective
configuration back as TOML ``load`` accepts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_host.backend import BACKENDS
from hypertier_common import tomlconfig
from hypertier_common.errors import ConfigError
from hypertier_common.metrics import MetricsConfig, split_listen
from hypertier_common.tomlconfig import check, in_range

__all__ = [
    "DEFAULT_CONFIG",
    "ChannelConfig",
    "ClassConfig",
    "Config",
    "HostConfig",
    "MetricsConfig",
    "PolicyConfig",
    "dumps",
    "load",
    "loads",
    "split_listen",
]

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_CONFIG = Path("/etc/hypertier/host.toml")


@dataclass(frozen=True)
class HostConfig:
    """``[host]``: backend, libvirt URI, control socket and host tier nodes.

    Empty ``fast_nodes``/``slow_nodes`` mean "discover from sysfs": nodes with
    CPUs are fast, CPU-less nodes (CXL.mem, PMEM via dax/kmem) slow. Without a
    CPU-less node and with ``emulate_slow_tier``, the fast nodes back the slow
    tier too (a separate guest node with fast-memory latency), and we say so.
    ``fast_capacity_bytes`` = 0 means total of the fast nodes minus
    ``policy.host_reserved_bytes``.
    """

    backend: str = "libvirt"
    uri: str = "qemu:///system"
    control_socket: str = "/run/hypertier/host.sock"
    fast_nodes: tuple[int, ...] = ()
    slow_nodes: tuple[int, ...] = ()
    emulate_slow_tier: bool = True
    sysfs_root: str = "/"
    fast_capacity_bytes: int = 0
    # Where QEMU creates the channel sockets: must be writable by the QEMU user,
    # as libvirt's own directory for guest-agent channels is.
    channel_dir: str = "/var/lib/libvirt/qemu/channel/target"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"host.backend: {self.backend!r} unknown; "
                f"choose from {sorted(BACKENDS)}"
            )
        for key in ("fast_nodes", "slow_nodes"):
            nodes = getattr(self, key)
            if any(n < 0 for n in nodes) or len(set(nodes)) != len(nodes):
                raise ConfigError(f"host.{key}: distinct node ids >= 0, got {nodes}")
        if set(self.fast_nodes) & set(self.slow_nodes) and not self.emulate_slow_tier:
            raise ConfigError(
                "host.fast_nodes and host.slow_nodes overlap; "
                "set host.emulate_slow_tier = true to share nodes"
            )
        check("host", self, non_negative="fast_capacity_bytes")
        if not self.control_socket:
            raise ConfigError("host.control_socket must not be empty")


@dataclass(frozen=True)
class PolicyConfig:
    """``[policy]``: tick interval, safety margin, rate limit and hysteresis."""

    interval_s: float = 1.0
    slow_overcommit_ratio: float = 1.0
    safety_margin_bytes: int = 128 * MiB
    safety_margin_ratio: float = 0.05
    host_reserved_bytes: int = 1 * GiB
    hot_headroom_ratio: float = 0.1
    max_step_bytes: int = 1 * GiB
    min_resize_interval_s: float = 5.0
    # max_step_bytes at the guest's default 200 MiB/s takes 5.1 s of moves
    shrink_notice_s: float = 10.0
    hysteresis_bytes: int = 32 * MiB
    hysteresis_ratio: float = 0.02
    report_timeout_s: float = 10.0
    # A fall of a VM's demand beyond its hysteresis band counts once it has
    # lasted this long (docs/host.md, "Trust model": a guest that flaps its
    # claim makes the others shrink and grow on every turn).
    demand_release_s: float = 30.0
    default_class: str = "standard"
    discover_every_ticks: int = 5
    max_resizes_per_tick: int = 64

    def __post_init__(self) -> None:
        if not 1.0 <= self.slow_overcommit_ratio <= 16.0:
            raise ConfigError(
                "policy.slow_overcommit_ratio must be in [1, 16], "
                f"got {self.slow_overcommit_ratio}"
            )
        check(
            "policy",
            self,
            positive="interval_s max_step_bytes report_timeout_s"
            " discover_every_ticks max_resizes_per_tick",
            non_negative="safety_margin_bytes host_reserved_bytes hysteresis_bytes"
            " min_resize_interval_s shrink_notice_s demand_release_s",
            unit="safety_margin_ratio hysteresis_ratio hot_headroom_ratio",
        )


@dataclass(frozen=True)
class ChannelConfig:
    """``[channel]``: what a guest may send before it is throttled."""

    max_msgs_per_s: float = 10.0
    burst_msgs: int = 20
    max_invalid: int = 5
    throttle_s: float = 60.0
    max_read_bytes: int = 65536
    # Bytes of one guest parsed per tick (blank lines and junk included); the
    # rest is discarded unread and is a strike. An honest guest sends a few
    # hundred bytes per report.
    max_bytes_per_tick: int = 16384

    def __post_init__(self) -> None:
        check(
            "channel",
            self,
            positive="max_msgs_per_s burst_msgs max_invalid",
            non_negative="throttle_s",
        )
        for key in ("max_read_bytes", "max_bytes_per_tick"):
            in_range(f"channel.{key}", getattr(self, key), 4096, 1 << 24)


@dataclass(frozen=True)
class ClassConfig:
    """``[classes.<name>]``: a QoS class; ``weight`` scales its fast-tier share."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1000 or not math.isfinite(self.weight):
            raise ConfigError(f"weight must be in (0, 1000], got {self.weight}")


def _default_classes() -> dict[str, ClassConfig]:
    return {
        "gold": ClassConfig(4.0),
        "silver": ClassConfig(2.0),
        "bronze": ClassConfig(1.0),
        "standard": ClassConfig(1.0),
    }


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``classes`` given in a file replace the defaults."""

    host: HostConfig = field(default_factory=HostConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    classes: Mapping[str, ClassConfig] = field(default_factory=_default_classes)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("classes: at least one class is needed")
        for name in self.classes:
            if not name.isidentifier():
                raise ConfigError(f"classes.{name}: class names are identifiers")
        if self.policy.default_class not in self.classes:
            raise ConfigError(
                f"policy.default_class: {self.policy.default_class!r} is not one of "
                f"the classes {sorted(self.classes)}"
            )

    @property
    def control_socket(self) -> str:
        return self.host.control_socket

    def weight(self, qos_class: str) -> float:
        """Weight of ``qos_class``, or of the default class if it is unknown."""
        found = self.classes.get(qos_class)
        if found is None:
            found = self.classes[self.policy.default_class]
        return found.weight


loads = functools.partial(tomlconfig.loads, Config)
"""``loads(text, source="<string>")``: parse and validate TOML text."""
load = functools.partial(tomlconfig.load, Config)
"""``load(path)``: read and validate a file (ConfigError names file and key)."""
dumps = tomlconfig.dumps
