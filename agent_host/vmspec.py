"""What a tiered VM is made of: TieredVmSpec, the guest-node and device-alias
layout that every tiered domain shares, and the virtio-mem size rules.

Pure: :mod:`agent_host.domxml` writes the domain XML of a spec,
:mod:`agent_host.allotments` reads and resizes its virtio-mem devices
(https://libvirt.org/formatdomain.html#memory-devices).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from agent_host.backend import Tier
from agent_host.metadata import TieringMetadata, TierMetadata
from hypertier_common.errors import ConfigError

__all__ = [
    "ALIASES",
    "CHANNEL_NAME",
    "DEFAULT_BLOCK_BYTES",
    "GUEST_NODES",
    "KiB",
    "MiB",
    "TieredVmSpec",
    "check_block",
    "check_tier_sizes",
]

MiB = 1 << 20
KiB = 1 << 10
DEFAULT_BLOCK_BYTES = 2 * MiB
CHANNEL_NAME = "org.hypertier.0"
# libvirt 9.0 rejects user-chosen device aliases unless they start with "ua-".
ALIASES: dict[Tier, str] = {
    Tier.FAST: "ua-hypertier-fast",
    Tier.SLOW: "ua-hypertier-slow",
}
GUEST_NODES: dict[Tier, int] = {Tier.FAST: 0, Tier.SLOW: 1}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def _tuple_of_ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class TieredVmSpec:
    """Everything needed to write (or convert to) a tiered domain.

    Sizes are bytes. ``fast_bytes``/``slow_bytes`` are the initial *requested* size
    of each tier's virtio-mem allotment (the reservation), ``fast_max_bytes``/
    ``slow_max_bytes`` its ceiling (the device's ``<size>``, the limit). On top of
    the allotment each guest node has fixed boot memory (``fast_boot_bytes``,
    ``slow_boot_bytes``) that the kernel can use before the virtio-mem driver loads;
    so guest node 0 holds ``fast_boot_bytes + requested`` once plugged.

    ``host_fast_nodes``/``host_slow_nodes`` are host NUMA node ids (lists are
    accepted and stored as tuples). If the host has one node only, pass it for both:
    the slow tier is then emulated (same memory, separate guest node) and
    :attr:`TieredDomainXml.notes` says so.

    ``kernel``/``initrd``/``cmdline`` select direct kernel boot; otherwise the disk
    boots. ``domain_type`` is ``"kvm"`` (hardware) or ``"qemu"`` (TCG emulation).
    """

    name: str
    vcpus: int
    fast_bytes: int
    slow_bytes: int
    fast_max_bytes: int
    slow_max_bytes: int
    host_fast_nodes: Sequence[int]  # stored as a tuple
    host_slow_nodes: Sequence[int]
    disk_path: str
    channel_path: str
    qos_class: str = "standard"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    fast_boot_bytes: int = 256 * MiB
    slow_boot_bytes: int = 128 * MiB
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    domain_type: Literal["kvm", "qemu"] = "kvm"
    emulator: str = "/usr/bin/qemu-system-x86_64"
    disk_format: str = "qcow2"
    console_log_path: str | None = None

    def __post_init__(self) -> None:
        # Accept lists for the node sets but store tuples: the spec stays hashable.
        object.__setattr__(
            self, "host_fast_nodes", _tuple_of_ints(self.host_fast_nodes)
        )
        object.__setattr__(
            self, "host_slow_nodes", _tuple_of_ints(self.host_slow_nodes)
        )
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"vm name {self.name!r} is not a valid domain name")
        if self.vcpus <= 0:
            raise ConfigError(f"vcpus must be > 0, got {self.vcpus}")
        if self.domain_type not in ("kvm", "qemu"):
            raise ConfigError(
                f"domain_type must be 'kvm' or 'qemu', got {self.domain_type!r}"
            )
        check_block(self.block_bytes)
        for tier in Tier:
            check_tier_sizes(
                tier,
                requested_bytes=self.requested_bytes(tier),
                max_bytes=self.max_bytes(tier),
                block_bytes=self.block_bytes,
            )
            boot = self.boot_bytes(tier)
            if boot <= 0 or boot % MiB:
                raise ConfigError(
                    f"{tier.value}_boot_bytes must be a positive multiple of 1 MiB, "
                    f"got {boot}"
                )
            nodes = self.host_nodes(tier)
            if not nodes or any(n < 0 for n in nodes):
                raise ConfigError(
                    f"host_{tier.value}_nodes must list host NUMA node ids >= 0, "
                    f"got {nodes}"
                )
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ConfigError("initrd and cmdline need kernel (direct kernel boot)")

    def requested_bytes(self, tier: Tier) -> int:
        return self.fast_bytes if tier is Tier.FAST else self.slow_bytes

    def max_bytes(self, tier: Tier) -> int:
        return self.fast_max_bytes if tier is Tier.FAST else self.slow_max_bytes

    def boot_bytes(self, tier: Tier) -> int:
        return self.fast_boot_bytes if tier is Tier.FAST else self.slow_boot_bytes

    def host_nodes(self, tier: Tier) -> tuple[int, ...]:
        return tuple(
            self.host_fast_nodes if tier is Tier.FAST else self.host_slow_nodes
        )

    @property
    def slow_tier_emulated(self) -> bool:
        """True when both tiers are bound to the same host memory."""
        return set(self.host_fast_nodes) == set(self.host_slow_nodes)

    def metadata(self) -> TieringMetadata:
        """The HyperTier metadata a domain made from this spec starts with."""
        return TieringMetadata(
            self.qos_class,
            tuple(
                TierMetadata(
                    tier,
                    reservation_bytes=self.requested_bytes(tier),
                    limit_bytes=self.max_bytes(tier),
                    host_nodes=tuple(sorted(set(self.host_nodes(tier)))),
                    emulated=tier is Tier.SLOW and self.slow_tier_emulated,
                )
                for tier in Tier
            ),
        )


def check_block(block_bytes: int) -> None:
    # virtio-mem needs a power-of-two block of at least the THP size (2 MiB on x86).
    if block_bytes < DEFAULT_BLOCK_BYTES or block_bytes & (block_bytes - 1):
        raise ConfigError(
            f"virtio-mem block_bytes must be a power of two >= 2 MiB, got {block_bytes}"
        )


def check_tier_sizes(
    tier: Tier, requested_bytes: int, max_bytes: int, block_bytes: int
) -> None:
    if max_bytes <= 0 or max_bytes % block_bytes:
        raise ConfigError(
            f"{tier.value}_max_bytes must be a positive multiple of the block size "
            f"{block_bytes}, got {max_bytes}"
        )
    if (
        requested_bytes < 0
        or requested_bytes % block_bytes
        or requested_bytes > max_bytes
    ):
        raise ConfigError(
            f"{tier.value} requested size {requested_bytes} must be a multiple of "
            f"{block_bytes} between 0 and {max_bytes}"
        )
