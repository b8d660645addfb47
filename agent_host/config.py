"""The host agent's TOML configuration: one frozen dataclass per table (tomllib).

``load(path)`` is strict (hypertier_common.tomlconfig: unknown keys and wrong
types name the file and the full key); ``dumps(cfg)`` writes the effective
configuration back as TOML ``load`` accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from agent_host.backend import BACKENDS
from hypertier_common import tomlconfig
from hypertier_common.metrics import MetricsConfig, split_listen
from hypertier_common.tomlconfig import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Bound,
    Table,
    require,
)

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
class HostConfig(Table, table="host"):
    """``[host]``: backend, libvirt URI, control socket and host tier nodes.

    Empty ``fast_nodes``/``slow_nodes`` mean "discover from sysfs": nodes with
    CPUs are fast, CPU-less nodes (CXL.mem, PMEM via dax/kmem) slow. Without a
    CPU-less node and with ``emulate_slow_tier``, the fast nodes back the slow
    tier too (a separate guest node with fast-memory latency), and we say so.
    ``fast_capacity_bytes`` = 0 means total of the fast nodes minus
    ``policy.host_reserved_bytes`` (times ``emulated_fast_share`` when the slow
    tier is emulated on them: the slow tier then gets the rest).
    """

    backend: str = "libvirt"
    uri: str = "qemu:///system"
    control_socket: str = "/run/hypertier/host.sock"
    fast_nodes: tuple[int, ...] = ()
    slow_nodes: tuple[int, ...] = ()
    emulate_slow_tier: bool = True
    sysfs_root: str = "/"
    fast_capacity_bytes: Annotated[int, NON_NEGATIVE] = 0
    # With the slow tier emulated on the fast nodes: the part of their memory
    # (less policy.host_reserved_bytes) the fast tier may allot; the slow tier
    # gets the rest, so the two tiers never allot the same memory twice.
    emulated_fast_share: Annotated[float, UNIT] = 0.5
    # Where QEMU creates the channel sockets: must be writable by the QEMU user,
    # as libvirt's own directory for guest-agent channels is.
    channel_dir: str = "/var/lib/libvirt/qemu/channel/target"

    def validate(self) -> None:
        require(
            self.backend in BACKENDS,
            f"host.backend: {self.backend!r} unknown; choose from {sorted(BACKENDS)}",
        )
        for key in ("fast_nodes", "slow_nodes"):
            nodes = getattr(self, key)
            require(
                all(n >= 0 for n in nodes) and len(set(nodes)) == len(nodes),
                f"host.{key}: distinct node ids >= 0, got {nodes}",
            )
        require(
            not set(self.fast_nodes) & set(self.slow_nodes) or self.emulate_slow_tier,
            "host.fast_nodes and host.slow_nodes overlap; "
            "set host.emulate_slow_tier = true to share nodes",
        )
        require(bool(self.control_socket), "host.control_socket must not be empty")


@dataclass(frozen=True)
class PolicyConfig(Table, table="policy"):
    """``[policy]``: tick interval, safety margin, rate limit and hysteresis."""

    interval_s: Annotated[float, POSITIVE] = 1.0
    slow_overcommit_ratio: Annotated[float, Bound(ge=1, le=16)] = 1.0
    safety_margin_bytes: Annotated[int, NON_NEGATIVE] = 128 * MiB
    safety_margin_ratio: Annotated[float, UNIT] = 0.05
    host_reserved_bytes: Annotated[int, NON_NEGATIVE] = 1 * GiB
    hot_headroom_ratio: Annotated[float, UNIT] = 0.1
    max_step_bytes: Annotated[int, POSITIVE] = 1 * GiB
    min_resize_interval_s: Annotated[float, NON_NEGATIVE] = 5.0
    # max_step_bytes at the guest's default 200 MiB/s takes 5.1 s of moves
    shrink_notice_s: Annotated[float, NON_NEGATIVE] = 10.0
    hysteresis_bytes: Annotated[int, NON_NEGATIVE] = 32 * MiB
    hysteresis_ratio: Annotated[float, UNIT] = 0.02
    report_timeout_s: Annotated[float, POSITIVE] = 10.0
    # A fall of a VM's demand beyond its hysteresis band counts once it has
    # lasted this long (docs/host.md, "Trust model": a guest that flaps its
    # claim makes the others shrink and grow on every turn).
    demand_release_s: Annotated[float, NON_NEGATIVE] = 30.0
    default_class: str = "standard"
    discover_every_ticks: Annotated[int, POSITIVE] = 5
    max_resizes_per_tick: Annotated[int, POSITIVE] = 64


@dataclass(frozen=True)
class ChannelConfig(Table, table="channel"):
    """``[channel]``: what a guest may send before it is throttled."""

    # An honest guest sends a report every guest.report_interval_s (5 s), one
    # more when its fast node fits a lowered allotment, and a hello per
    # session. Every report within the rate is decoded in full: at 10 a second
    # 100 guests sending valid reports cost the host 107 ms a tick.
    max_msgs_per_s: Annotated[float, POSITIVE] = 1.0
    burst_msgs: Annotated[int, POSITIVE] = 10
    max_invalid: Annotated[int, POSITIVE] = 5
    throttle_s: Annotated[float, NON_NEGATIVE] = 60.0
    max_read_bytes: Annotated[int, Bound(ge=4096, le=1 << 24)] = 65536
    # Bytes of one guest parsed per tick (blank lines and junk included); the
    # rest is discarded unread and is a strike. An honest guest sends a few
    # hundred bytes per report.
    max_bytes_per_tick: Annotated[int, Bound(ge=4096, le=1 << 24)] = 16384


@dataclass(frozen=True)
class ClassConfig(Table):
    """``[classes.<name>]``: a QoS class; ``weight`` scales its fast-tier share."""

    weight: Annotated[float, Bound(gt=0, le=1000)] = 1.0


def _default_classes() -> dict[str, ClassConfig]:
    return {
        "gold": ClassConfig(4.0),
        "silver": ClassConfig(2.0),
        "bronze": ClassConfig(1.0),
        "standard": ClassConfig(1.0),
    }


@dataclass(frozen=True)
class Config(Table):
    """The whole configuration; ``classes`` given in a file replace the defaults."""

    host: HostConfig = field(default_factory=HostConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    classes: Mapping[str, ClassConfig] = field(default_factory=_default_classes)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        require(bool(self.classes), "classes: at least one class is needed")
        for name in self.classes:
            require(name.isidentifier(), f"classes.{name}: class names are identifiers")
        require(
            self.policy.default_class in self.classes,
            f"policy.default_class: {self.policy.default_class!r} is not one of "
            f"the classes {sorted(self.classes)}",
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
