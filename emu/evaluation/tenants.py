"""The ``multi-tenant`` preset of ``hypertier compare``: QoS classes under contention.

Eight VMs in four QoS classes share a host whose fast memory is well below the sum
of their hot sets. Besides the plain policies the preset runs three variants: the
real agents with one VM's guest agent lying on the virtio-serial channel
(:class:`LyingGuestBackend`), and the tier-unaware balloon ablation
(:class:`BalloonPolicy`). :func:`documented_shares` computes the split that
docs/host.md promises; :func:`tenant_rows` and :func:`format_report` compare every
VM's steady-state fast allotment with it. Model and results: docs/baselines.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from agent_guest import config as guest_config
from agent_guest.selection import coverage_bytes
from agent_host import config as host_config
from emu.backends.guest import EmuGuestBackend
from emu.backends.liar import LyingGuestBackend
from emu.machine import PAGE_SIZE, World
from emu.policies import Policy, VmSpec
from emu.policies.balloon import BalloonPolicy
from emu.policies.base import LIAR_VARIANTS, TENANT_POLICY_NAMES

if TYPE_CHECKING:
    pass

__all__ = [
    "FLAP_S",
    "HUGE_NODE_BYTES",
    "SCENARIOS",
    "HostShareProbe",
    "Scenario",
    "ShareInput",
    "TenantVm",
    "documented_shares",
    "guest_channel_status",
    "make_scenario_policy",
    "scenario_shares",
    "share_inputs",
]

MIB = 1 << 20
# What the "huge" liar claims per node: 1 TiB, far within the wire format's
# bound (1 PiB) and, today, within the host's plausibility slack for boot memory.
HUGE_NODE_BYTES = 1 << 40
# How long each turn of the flapping liar lasts (emulated s): a few of the
# host agent's minimum resize intervals (0.3 s), so every turn moves the split.
FLAP_S = 0.5
# Demeter (SOSP'25): GUPS throughput with per-tier over tier-unaware balloons.
DEMETER_PER_TIER_GAIN = 0.68


# ----------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class TenantVm:
    """One VM of a scenario: a GUPS whose hot region is ``hot_fraction`` of it."""

    name: str
    qos_class: str
    hot_fraction: float


@dataclass(frozen=True)
class Scenario:
    """An explicit VM set on one host; sizes are fractions of a VM's footprint.

    Every VM starts with the same fast allotment (``fast_fraction``), the host's
    fast memory is exactly their sum, and each fast device (the limit) is
    ``fast_max_fraction`` of the footprint so that any class share is reachable.
    VMs start, and first touch their memory, in the order listed.
    """

    name: str
    vms: tuple[TenantVm, ...]
    policies: tuple[str, ...]  # the columns of compare that apply
    liar: str | None = None  # the VM whose guest agent lies in the liar variants
    fast_fraction: float = 0.25
    slow_fraction: float = 1.0
    fast_max_fraction: float = 1.0
    reservation_fraction: float = 1 / 32
    workload: str = "gups"

    def _blocks(self, fraction: float, npages: int, block_bytes: int) -> int:
        return max(1, round(fraction * npages * PAGE_SIZE / block_bytes)) * block_bytes

    def specs(self, npages: int, accesses: int, block_bytes: int) -> list[VmSpec]:
        """The VMs, each with ``npages`` of footprint and ``accesses`` LLC misses."""
        fast = self._blocks(self.fast_fraction, npages, block_bytes)
        return [
            VmSpec(
                name=vm.name,
                workload=self.workload,
                npages=npages,
                fast_bytes=fast,
                slow_bytes=self._blocks(self.slow_fraction, npages, block_bytes),
                total_accesses=accesses,
                qos_class=vm.qos_class,
                seed=i + 1,
                fast_max_bytes=self._blocks(
                    self.fast_max_fraction, npages, block_bytes
                ),
                fast_reservation_bytes=self._blocks(
                    self.reservation_fraction, npages, block_bytes
                ),
                workload_options=(("hot_fraction", vm.hot_fraction),),
            )
            for i, vm in enumerate(self.vms)
        ]

    def host_fast_bytes(self, npages: int, block_bytes: int) -> int:
        """The host's fast memory: every VM's fast allotment at start."""
        return len(self.vms) * self._blocks(self.fast_fraction, npages, block_bytes)

    def host_slow_bytes(self, npages: int, block_bytes: int) -> int:
        """The host's slow memory: twice every VM's slow allotment, whichever way
        a policy splits the VMs' memory (as ``build_world`` sizes it by default)."""
        return 2 * len(self.vms) * self._blocks(self.slow_fraction, npages, block_bytes)

    def ratio(self) -> int:
        """K of the VMs' initial fast:slow split 1:K."""
        return max(1, round(self.slow_fraction / self.fast_fraction))


CLASSES = ("gold", "silver", "bronze", "standard")

SCENARIOS: dict[str, Scenario] = {
    # Per class one VM whose hot set is half its footprint and one with a tenth:
    # hot sets total 2.4 footprints, the host's fast memory is 2. Boot order
    # mixes classes and sizes, so first touch favours no class.
    "tenants": Scenario(
        name="tenants",
        vms=tuple(
            TenantVm(f"{cls}-{size}", cls, 0.5 if size == "big" else 0.1)
            for cls, size in (
                ("bronze", "big"),
                ("gold", "small"),
                ("standard", "small"),
                ("silver", "big"),
                ("gold", "big"),
                ("bronze", "small"),
                ("silver", "small"),
                ("standard", "big"),
            )
        ),
        policies=TENANT_POLICY_NAMES,
        liar="bronze-small",
    ),
    # Demeter's comparison: identical GUPS VMs (hot tenth), one class; the hot
    # sets fit in the host's fast memory if it is split per tier.
    "gups": Scenario(
        name="gups",
        vms=tuple(TenantVm(f"gups{i}", "standard", 0.1) for i in range(1, 9)),
        policies=("none", "all-fast", "hypertier", "balloon"),
    ),
}


# ------------------------------------------------------------ documented share
@dataclass(frozen=True)
class ShareInput:
    """One VM as the documented fast-tier split sees it (bytes)."""

    weight: float
    demand_bytes: float
    limit_bytes: float
    reservation_bytes: float = 0.0


def documented_shares(capacity_bytes: float, vms: Sequence[ShareInput]) -> list[float]:
    """The fast-tier split docs/host.md documents, in bytes per VM.

    Weighted max-min fair (water-filling) split of ``capacity_bytes``: VM i gets
    ``clamp(weight_i * level, reservation_i, max(reservation_i, min(demand_i,
    limit_i)))`` with the one level at which the shares sum to the capacity. If
    every VM's cap fits, each gets its cap; if the reservations alone exceed the
    capacity, each gets its reservation. Not rounded to blocks.
    """
    lo = [max(0.0, v.reservation_bytes) for v in vms]
    hi = [max(lo[i], min(v.demand_bytes, v.limit_bytes)) for i, v in enumerate(vms)]
    if sum(hi) <= capacity_bytes:
        return hi
    if sum(lo) >= capacity_bytes:
        return lo

    def total(level: float) -> float:
        return sum(min(hi[i], max(lo[i], v.weight * level)) for i, v in enumerate(vms))

    # total() is piecewise linear in the level, with kinks where a VM leaves
    # its reservation or reaches its cap: find the segment, then interpolate.
    kinks = sorted(
        {0.0}
        | {lo[i] / v.weight for i, v in enumerate(vms)}
        | {hi[i] / v.weight for i, v in enumerate(vms)}
    )
    below, at_below = 0.0, total(0.0)
    for k in kinks:
        at_k = total(k)
        if at_k >= capacity_bytes:
            level = below + (k - below) * (capacity_bytes - at_below) / (
                at_k - at_below
            )
            return [min(hi[i], max(lo[i], v.weight * level)) for i, v in enumerate(vms)]
        below, at_below = k, at_k
    return hi  # unreachable: total(max kink) = sum(hi) > capacity


def guest_demand_bytes(spec: VmSpec, guest_cfg: guest_config.Config) -> float:
    """The demand an honest guest agent reports for ``spec`` (docs/wire-protocol.md,
    "Demand and pressure"), from the workload's true access rates: the least
    memory serving ``classify.demand_coverage`` of its accesses, plus the
    mover's fast reserve. The agent estimates the same from samples, by ranges."""
    from emu.workloads import make_workload

    wl = make_workload(
        spec.workload, spec.npages, seed=0, **dict(spec.workload_options)
    )
    rates = wl.rates()
    size = np.full(rates.shape[0], float(PAGE_SIZE))
    hot = coverage_bytes(rates, size, guest_cfg.classify.demand_coverage)
    return float(guest_cfg.mover.limit_for(hot))


def share_inputs(
    specs: Sequence[VmSpec],
    cfg: host_config.Config,
    block_bytes: int,
    guest_cfg: guest_config.Config | None = None,
) -> list[ShareInput]:
    """The documented split's inputs from the VM specs and the agents' configs.

    Demand = the honest guest's demand (:func:`guest_demand_bytes`) x (1 +
    ``policy.hot_headroom_ratio``) (the emulated fast node has no boot memory);
    the limit is the fast device size in whole blocks, the reservation the one
    the host records; the weight the class's.
    """
    from emu.policies.hypertier import GUEST_TOML

    gcfg = guest_cfg or guest_config.loads(GUEST_TOML, "<emu guest>")

    def up(n: int) -> int:
        return -(-n // block_bytes) * block_bytes

    out = []
    for s in specs:
        demand = guest_demand_bytes(s, gcfg)
        out.append(
            ShareInput(
                weight=cfg.weight(s.qos_class),
                demand_bytes=demand * (1 + cfg.policy.hot_headroom_ratio),
                limit_bytes=up(max(s.fast_max_bytes or 0, s.fast_bytes)),
                reservation_bytes=float(
                    s.fast_bytes // 2
                    if s.fast_reservation_bytes is None
                    else s.fast_reservation_bytes
                ),
            )
        )
    return out


def fast_capacity_bytes(host_fast_bytes: int, cfg: host_config.Config) -> int:
    """The fast capacity the host agent splits (as its daemon computes it)."""
    return cfg.host.fast_capacity_bytes or max(
        0, host_fast_bytes - cfg.policy.host_reserved_bytes
    )


def scenario_shares(
    scenario: Scenario, npages: int, block_bytes: int, cfg: host_config.Config
) -> dict[str, float]:
    """Each VM's documented fast share (bytes) in ``scenario``."""
    specs = scenario.specs(npages, 1, block_bytes)
    capacity = fast_capacity_bytes(scenario.host_fast_bytes(npages, block_bytes), cfg)
    shares = documented_shares(capacity, share_inputs(specs, cfg, block_bytes))
    return {s.name: share for s, share in zip(specs, shares, strict=True)}


# --------------------------------------------------------- scenario policies
def make_scenario_policy(name: str, scenario: Scenario) -> Policy:
    """A fresh policy for a cell of ``scenario``: the variants, else by name.

    Raises:
        ValueError: unknown name, or a liar variant in a scenario without a liar.
    """
    from emu.policies import make_policy

    if name in LIAR_VARIANTS:
        liar = scenario.liar
        if liar is None:
            raise ValueError(f"scenario {scenario.name!r} has no lying VM")
        claim = HUGE_NODE_BYTES if name.endswith("-huge") else None
        flap = FLAP_S if name.endswith("-flap") else None

        def backend(world: World, vm: str, pmu: str) -> EmuGuestBackend:
            if vm == liar:
                return LyingGuestBackend(world, vm, pmu, claim, flap)
            return EmuGuestBackend(world, vm, pmu)

        return make_policy("hypertier", column=name, guest_backend=backend)
    if name == "balloon":
        return BalloonPolicy()
    return make_policy(name)


def guest_channel_status(policy: Policy) -> dict[str, object]:
    """What the host agent's ``status()`` says of each VM's guest channel at the
    end of a run (messages, invalid, flags); {} without a host agent."""
    from emu.policies.hypertier import HyperTierPolicy

    if isinstance(policy, HostShareProbe):
        policy = policy.inner
    if not isinstance(policy, HyperTierPolicy):
        return {}
    vms = policy.host_status().get("vms", {})
    assert isinstance(vms, Mapping)
    return {vm: dict(st.get("guest", {})) for vm, st in vms.items()}


class HostShareProbe:
    """Runs ``inner`` and, after each tick, records the fast share the host agent
    computed for every VM (its ``status()``'s ``tiers.fast.share_bytes``).

    ``series`` maps VM to ``t_s`` and ``fast_share_bytes``; empty when ``inner``
    has no host agent or its status gives no share.
    """

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.series: dict[str, dict[str, list[float]]] = {}

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        return self.inner.adjust(specs)

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        self.inner.attach(world, pids)

    def tick(self, world: World, epoch_s: float) -> None:
        from emu.policies.hypertier import HyperTierPolicy

        self.inner.tick(world, epoch_s)
        if not isinstance(self.inner, HyperTierPolicy):
            return
        vms = self.inner.host_status().get("vms", {})
        assert isinstance(vms, Mapping)
        now = world.clock.monotonic()
        for vm, st in vms.items():
            share = st.get("tiers", {}).get("fast", {}).get("share_bytes")
            if isinstance(share, int | float):
                ser = self.series.setdefault(vm, {"t_s": [], "fast_share_bytes": []})
                ser["t_s"].append(round(now, 6))
                ser["fast_share_bytes"].append(float(share))

    def close(self) -> None:
        self.inner.close()
