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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import hypertier_wire as wire
from agent_guest import config as guest_config
from agent_guest.classify import coverage_bytes
from agent_host import config as host_config
from emu.guest import EmuGuestBackend
from emu.policy import Policy, VmSpec
from emu.report import text_table
from emu.world import PAGE_SIZE, World

if TYPE_CHECKING:
    from emu.compare import Matrix

__all__ = [
    "HUGE_NODE_BYTES",
    "SCENARIOS",
    "VARIANT_POLICIES",
    "BalloonPolicy",
    "HostShareProbe",
    "LyingGuestBackend",
    "Scenario",
    "ShareInput",
    "TenantVm",
    "ablation",
    "documented_shares",
    "format_report",
    "guest_channel_status",
    "liar_effect",
    "make_scenario_policy",
    "report",
    "scenario_shares",
    "share_inputs",
    "tenant_rows",
    "write_plots",
]

MIB = 1 << 20
# Policies that exist only in a scenario: they need its liar or its host size.
VARIANT_POLICIES = ("hypertier-liar", "hypertier-liar-huge", "balloon")
# What the "huge" liar claims per node: 1 TiB, far within the wire format's
# bound (1 PiB) and, today, within the host's plausibility slack for boot memory.
HUGE_NODE_BYTES = 1 << 40
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
        policies=(
            "none",
            "all-fast",
            "hypertier",
            "hypertier-liar",
            "hypertier-liar-huge",
            "balloon",
        ),
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
    from emu.hypertier_policy import GUEST_TOML

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


# ------------------------------------------------------------------- the liar
class LyingGuestBackend(EmuGuestBackend):
    """A guest whose agent places honestly but whose reports claim everything.

    Every report the agent sends is replaced by a valid maximal claim: each
    node full (``used_bytes = total_bytes``), ``hot_bytes`` = all its memory,
    ``pressure`` 1.0. Node totals are the true ones, or ``claim_node_bytes``
    each (the "huge" liar). Other fields keep the agent's values; hellos and
    anything that is not a report pass unchanged. ``lies`` counts rewrites.
    """

    def __init__(
        self,
        world: World,
        vm: str,
        pmu: str = "pebs",
        claim_node_bytes: int | None = None,
    ) -> None:
        super().__init__(world, vm, pmu)
        self._claim = claim_node_bytes
        self._partial = b""
        self.lies = 0

    def lie(self, report: wire.Report) -> wire.Report:
        """The maximal claim that replaces ``report``."""
        nodes = tuple(
            wire.NodeUsage(
                n.node,
                n.tier,
                self._claim if self._claim is not None else n.total_bytes,
                self._claim if self._claim is not None else n.total_bytes,
            )
            for n in report.nodes
        )
        memory = min(sum(n.total_bytes for n in nodes), wire.MAX_BYTES)
        return replace(report, nodes=nodes, hot_bytes=memory, pressure=1.0)

    def channel_send(self, line: bytes) -> None:
        data = self._partial + line
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        out = []
        for raw in data[:end].split(b"\n")[:-1]:
            try:
                msg = wire.decode(raw)
            except wire.WireError:
                msg = None
            if isinstance(msg, wire.Report):
                out.append(wire.encode(self.lie(msg)))
                self.lies += 1
            else:
                out.append(raw + b"\n")
        if out:
            super().channel_send(b"".join(out))


# ----------------------------------------------------------- the balloon model
class BalloonPolicy:
    """The seed's ablation: one tier-unaware allotment per VM (a classic balloon).

    The host sizes each VM's memory as a whole (here: the same total as the
    per-tier runs, held constant) but not its split between tiers: each guest's
    fast node is as large as its fast device, bound to the host's fast node with
    a preferred policy, so its frames are backed by fast memory on first touch
    while the host has any left and by slow memory after that, first come first
    served across VMs, whatever their class. The real guest agents still place
    pages inside each VM (they see a large fast node); no host agent runs.
    Give the run the host's real memory (``run_scenario(host_fast_bytes=,
    host_slow_bytes=)``): sized from the enlarged fast nodes it would be too big.
    """

    def __init__(self, name: str = "balloon") -> None:
        from emu.baselines import make_policy

        self.name = name
        self._agents = make_policy("hypertier", column=name, host_agent=False)

    def adjust(self, specs: Sequence[VmSpec]) -> Sequence[VmSpec]:
        out = []
        for s in specs:
            total = s.fast_bytes + s.slow_bytes
            fast = min(max(s.fast_max_bytes or 0, s.fast_bytes), total)
            out.append(replace(s, fast_bytes=fast, slow_bytes=total - fast))
        return self._agents.adjust(out)

    def attach(self, world: World, pids: Mapping[str, int]) -> None:
        self._agents.attach(world, pids)

    def tick(self, world: World, epoch_s: float) -> None:
        self._agents.tick(world, epoch_s)
        for vm in world.vms.values():
            vm.to_host.clear()  # no host agent listens on the port

    def close(self) -> None:
        self._agents.close()


def make_scenario_policy(name: str, scenario: Scenario) -> Policy:
    """A fresh policy for a cell of ``scenario``: the variants, else by name.

    Raises:
        ValueError: unknown name, or a liar variant in a scenario without a liar.
        PolicyUnavailable: see :func:`emu.baselines.make_policy`.
    """
    from emu.baselines import make_policy

    if name in ("hypertier-liar", "hypertier-liar-huge"):
        liar = scenario.liar
        if liar is None:
            raise ValueError(f"scenario {scenario.name!r} has no lying VM")
        claim = HUGE_NODE_BYTES if name.endswith("-huge") else None

        def backend(world: World, vm: str, pmu: str) -> EmuGuestBackend:
            if vm == liar:
                return LyingGuestBackend(world, vm, pmu, claim_node_bytes=claim)
            return EmuGuestBackend(world, vm, pmu)

        return make_policy("hypertier", column=name, guest_backend=backend)
    if name == "balloon":
        return BalloonPolicy()
    return make_policy(name)


def guest_channel_status(policy: Policy) -> dict[str, object]:
    """What the host agent's ``status()`` says of each VM's guest channel at the
    end of a run (messages, invalid, flags); {} without a host agent."""
    from emu.hypertier_policy import HyperTierPolicy

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
        from emu.hypertier_policy import HyperTierPolicy

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


# ------------------------------------------------------------------- analysis
def _series_key(policy: str) -> str:
    # A balloon has no fast allotment: what counts is the host fast memory
    # backing the VM. Elsewhere the allotment is the plugged fast node.
    return "fast_host_bytes" if policy == "balloon" else "fast_plugged_bytes"


def _steady_window(
    series: Mapping[str, Mapping[str, Sequence[float]]],
) -> tuple[float, float]:
    """The steady state of a run: the second half of the time every VM ran (up
    to the first VM's last sample; after that the contention is another one)."""
    ends = [ser["t_s"][-1] for ser in series.values() if ser.get("t_s")]
    end = min(ends, default=0.0)
    return end / 2, end


def _window_mean(
    t_s: Sequence[float], values: Sequence[float], window: tuple[float, float]
) -> float | None:
    got = [v for t, v in zip(t_s, values, strict=False) if window[0] <= t <= window[1]]
    return sum(got) / len(got) if got else None


def tenant_rows(
    scenario: Scenario,
    results: Sequence[Mapping[str, object]],
    npages: int,
    accesses: int,
    block_bytes: int,
    cfg: host_config.Config,
) -> list[dict[str, object]]:
    """One row per (VM, policy) of ``scenario``'s cells (run_cell outputs).

    Fields: ``scenario``, ``vm``, ``class``, ``weight``, ``hot_bytes``,
    ``share_bytes`` (documented), ``policy``, ``fast_bytes`` (steady state: the
    mean over the second half of the time every VM of the cell ran),
    ``share_pct``, ``elapsed_s``, ``vs_all_fast`` (elapsed / all-fast's),
    ``fast_hit_ratio`` (whole run), ``hit_ss`` (mean per-epoch hit ratio, steady
    state), what the host agent counted on the VM's channel
    (``channel_messages``, ``channel_invalid``, ``channel_implausible``) and its
    ``share_bytes`` for the VM (``host_share_bytes``, steady state, from the
    cell's ``host_shares``); None where it does not say.
    """
    specs = scenario.specs(npages, accesses, block_bytes)
    shares = scenario_shares(scenario, npages, block_bytes, cfg)
    by_vm = {s.name: (s, shares[s.name]) for s in specs}
    mine = [r for r in results if _cell_field(r, "scenario") == scenario.name]
    all_fast: dict[str, float] = {}
    for r in mine:
        if _cell_field(r, "policy") == "all-fast":
            for row in _rows(r):
                e = row.get("elapsed_s")
                if isinstance(e, int | float):
                    all_fast[str(row["vm"])] = float(e)
    out: list[dict[str, object]] = []
    for r in mine:
        policy = str(_cell_field(r, "policy"))
        series = r["series"]
        channels = r.get("guest_channels", {})
        assert isinstance(series, Mapping)
        assert isinstance(channels, Mapping)
        window = _steady_window(series)
        for row in _rows(r):
            vm = str(row["vm"])
            spec, share = by_vm[vm]
            ser = series.get(vm, {})
            t_s = ser.get("t_s", [])
            fast = _window_mean(t_s, ser.get(_series_key(policy), []), window)
            e = row.get("elapsed_s")
            base = all_fast.get(vm)
            out.append(
                {
                    "scenario": scenario.name,
                    "vm": vm,
                    "class": spec.qos_class,
                    "weight": cfg.weight(spec.qos_class),
                    "hot_bytes": round(
                        dict(spec.workload_options)["hot_fraction"]
                        * spec.npages
                        * PAGE_SIZE
                    ),
                    "share_bytes": round(share),
                    "policy": policy,
                    "fast_bytes": None if fast is None else round(fast),
                    "share_pct": None
                    if fast is None or share <= 0
                    else round(100 * fast / share, 1),
                    "elapsed_s": e,
                    "vs_all_fast": round(float(e) / base, 4)
                    if isinstance(e, int | float) and base
                    else None,
                    "fast_hit_ratio": row.get("fast_hit_ratio"),
                    "hit_ss": _round(
                        _window_mean(t_s, ser.get("fast_hit_ratio", []), window)
                    ),
                    "channel_messages": channels.get(vm, {}).get("messages"),
                    "channel_invalid": channels.get(vm, {}).get("invalid"),
                    "channel_implausible": channels.get(vm, {}).get(
                        "implausible_reports"
                    ),
                    "host_share_bytes": _host_share(r, vm, window),
                }
            )
    order = {vm.name: i for i, vm in enumerate(scenario.vms)}
    pols = {p: i for i, p in enumerate(scenario.policies)}
    out.sort(key=lambda x: (order[str(x["vm"])], pols.get(str(x["policy"]), 99)))
    return out


def _host_share(
    result: Mapping[str, object], vm: str, window: tuple[float, float]
) -> int | None:
    shares = result.get("host_shares", {})
    assert isinstance(shares, Mapping)
    ser = shares.get(vm)
    mean = _window_mean(ser["t_s"], ser["fast_share_bytes"], window) if ser else None
    return None if mean is None else round(mean)


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def _cell_field(result: Mapping[str, object], key: str) -> object:
    cell = result["cell"]
    assert isinstance(cell, Mapping)
    return cell.get(key)


def _rows(result: Mapping[str, object]) -> list[Mapping[str, object]]:
    rows = result["rows"]
    assert isinstance(rows, list)
    return rows


def _by(
    rows: Sequence[Mapping[str, object]], policy: str
) -> dict[str, Mapping[str, object]]:
    return {str(r["vm"]): r for r in rows if r["policy"] == policy}


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def liar_effect(
    rows: Sequence[Mapping[str, object]], liar: str, variant: str
) -> dict[str, object] | None:
    """The lying VM's gain and each honest VM's loss, ``variant`` vs honest.

    Gain: the liar's fast allotment, hit ratio and elapsed when honest
    (``hypertier``) and lying (``honest_<key>``, ``lying_<key>``). Loss per honest
    VM (``honest_losses``): fast bytes lost and elapsed lying / honest. None when
    either run is missing.
    """
    honest, lying = _by(rows, "hypertier"), _by(rows, variant)
    if liar not in honest or liar not in lying:
        return None

    def pair(vm: str, key: str) -> tuple[float | None, float | None]:
        return _num(honest[vm].get(key)), _num(lying[vm].get(key))

    losses = {}
    for vm in honest:
        if vm == liar or vm not in lying:
            continue
        f0, f1 = pair(vm, "fast_bytes")
        e0, e1 = pair(vm, "elapsed_s")
        losses[vm] = {
            "fast_lost_bytes": None if f0 is None or f1 is None else round(f0 - f1),
            "elapsed_ratio": None if not e0 or e1 is None else round(e1 / e0, 4),
        }
    out: dict[str, object] = {"variant": variant, "liar": liar}
    for key in ("fast_bytes", "fast_hit_ratio", "elapsed_s"):
        out[f"honest_{key}"], out[f"lying_{key}"] = pair(liar, key)
    out["honest_losses"] = losses
    return out


def ablation(
    rows: Sequence[Mapping[str, object]], accesses: int
) -> dict[str, float | None]:
    """GUPS throughput (all VMs' LLC misses per emulated second, each VM's own
    elapsed) with per-tier allotments (``hypertier``) and with one tier-unaware
    allotment per VM (``balloon``), and the relative gain of per-tier."""

    def throughput(policy: str) -> float | None:
        mine = [r for r in rows if r["policy"] == policy]
        el = [_num(r.get("elapsed_s")) for r in mine]
        if not mine or any(not e for e in el):
            return None
        return sum(accesses / e for e in el if e)

    per_tier, balloon = throughput("hypertier"), throughput("balloon")
    return {
        "per_tier_accesses_per_s": per_tier,
        "balloon_accesses_per_s": balloon,
        "per_tier_gain": per_tier / balloon - 1 if per_tier and balloon else None,
    }


# ------------------------------------------------------------------ the table
def _mib(v: object) -> str:
    n = _num(v)
    return "-" if n is None else f"{n / MIB:.1f}"


def format_report(
    scenario: Scenario,
    rows: Sequence[Mapping[str, object]],
    accesses: int,
    block_bytes: int,
) -> str:
    """The per-VM table of one scenario, the liar's gain and the ablation."""
    policies = [p for p in scenario.policies if any(r["policy"] == p for r in rows)]
    vms = list(dict.fromkeys(str(r["vm"]) for r in rows))
    by = {(str(r["vm"]), str(r["policy"])): r for r in rows}
    first = {str(r["vm"]): r for r in reversed(rows)}
    blk = block_bytes / MIB
    out = [
        f"scenario {scenario.name}: {len(vms)} VMs; fast = steady-state fast "
        "allotment in MiB (mean over the second half of the time all VMs ran; "
        "balloon: host fast memory backing the VM) and % of the documented share; "
        "elapsed / "
        f"all-fast; hit = fast-tier hit ratio over the run; block = {blk:g} MiB; "
        "host_share = the host agent's share_bytes in the hypertier run (its split "
        "if every VM wanted its whole limit; mean over the same window)",
        "",
    ]
    heads = ["vm", "class", "hot_mib", "share_mib", "share_blk"]
    host_share = "hypertier" in policies
    if host_share:
        heads.append("host_share_mib")
    for p in policies:
        if p != "all-fast":
            heads += [f"{p}:fast", "%share"]
    body = []
    for vm in vms:
        r0 = first[vm]
        line = [
            vm,
            str(r0["class"]),
            _mib(r0["hot_bytes"]),
            _mib(r0["share_bytes"]),
            f"{float(str(r0['share_bytes'])) / block_bytes:.1f}",
        ]
        if host_share:
            line.append(_mib(by.get((vm, "hypertier"), {}).get("host_share_bytes")))
        for p in policies:
            if p == "all-fast":
                continue
            r = by.get((vm, p), {})
            pct = r.get("share_pct")
            line += [_mib(r.get("fast_bytes")), "-" if pct is None else f"{pct:.0f}%"]
        body.append(line)
    out.append(text_table(heads, body, 2))
    out.append("")
    heads = ["vm", "all-fast_s"]
    for p in policies:
        if p != "all-fast":
            heads += [f"{p}:x", "hit"]
    body = []
    for vm in vms:
        e = by.get((vm, "all-fast"), {}).get("elapsed_s")
        line = [vm, "-" if _num(e) is None else f"{float(str(e)):.3f}"]
        for p in policies:
            if p == "all-fast":
                continue
            r = by.get((vm, p), {})
            x, h = _num(r.get("vs_all_fast")), _num(r.get("fast_hit_ratio"))
            line += ["-" if x is None else f"{x:.3f}", "-" if h is None else f"{h:.3f}"]
        body.append(line)
    out.append(text_table(heads, body, 1))
    for variant in ("hypertier-liar", "hypertier-liar-huge"):
        eff = liar_effect(rows, scenario.liar, variant) if scenario.liar else None
        if eff is None:
            continue
        f0, f1 = eff["honest_fast_bytes"], eff["lying_fast_bytes"]
        h0, h1 = eff["honest_fast_hit_ratio"], eff["lying_fast_hit_ratio"]
        e0, e1 = _num(eff["honest_elapsed_s"]), _num(eff["lying_elapsed_s"])
        losses = eff["honest_losses"]
        assert isinstance(losses, dict)
        worst = max(
            losses.items(),
            key=lambda kv: kv[1]["fast_lost_bytes"] or 0,
            default=None,
        )
        out += [
            "",
            f"{variant}: {scenario.liar} lying vs honest: fast {_mib(f0)} -> "
            f"{_mib(f1)} MiB, hit {_fmt(h0)} -> {_fmt(h1)}, elapsed {_fmt(e0)} -> "
            f"{_fmt(e1)} s" + (f" (x{e0 / e1:.3f} faster)" if e0 and e1 else ""),
        ]
        chan = by.get((str(scenario.liar), variant), {})
        out.append(
            f"  host agent on {scenario.liar}'s channel: "
            f"{chan.get('channel_messages', '-')} messages, "
            f"{chan.get('channel_invalid', '-')} invalid, "
            f"{chan.get('channel_implausible', '-')} flagged implausible"
        )
        if worst is not None:
            slow = max((v["elapsed_ratio"] or 0 for v in losses.values()), default=0)
            out.append(
                f"  honest VMs: most fast lost {worst[0]} "
                f"{_mib(worst[1]['fast_lost_bytes'])} MiB; worst elapsed "
                f"lying/honest x{slow:.3f}"
            )
    abl = ablation(rows, accesses)
    if abl["per_tier_gain"] is not None:
        out += [
            "",
            f"ablation: GUPS throughput per-tier (hypertier) "
            f"{(abl['per_tier_accesses_per_s'] or 0) / 1e6:.1f} M/s vs tier-unaware "
            f"balloon {(abl['balloon_accesses_per_s'] or 0) / 1e6:.1f} M/s: "
            f"{100 * abl['per_tier_gain']:+.1f} % "
            f"(Demeter, SOSP'25: {100 * DEMETER_PER_TIER_GAIN:+.0f} %)",
        ]
    return "\n".join(out)


def _fmt(v: object) -> str:
    n = _num(v)
    return "-" if n is None else f"{n:.3f}"


# ------------------------------------------------------- compare's entry points
def _host_cfg() -> host_config.Config:
    from emu.hypertier_policy import HOST_TOML

    return host_config.loads(HOST_TOML, "<emu host>")


def _groups(
    matrix: Matrix, results: Sequence[Mapping[str, object]]
) -> list[tuple[Scenario, str, list[Mapping[str, object]]]]:
    return [
        (
            SCENARIOS[name],
            profile,
            [
                r
                for r in results
                if _cell_field(r, "scenario") == name
                and _cell_field(r, "profile") == profile
            ],
        )
        for name in matrix.scenarios
        for profile in matrix.profiles
    ]


def report(
    matrix: Matrix, results: Sequence[Mapping[str, object]]
) -> tuple[list[dict[str, object]], str, dict[str, object]]:
    """The per-VM rows of every scenario and profile, the printed text, and per
    scenario/profile the liar's effect and the ablation (for report.json)."""
    from emu.params import Params

    cfg, block = _host_cfg(), Params().block_bytes
    rows: list[dict[str, object]] = []
    texts: list[str] = []
    summary: dict[str, object] = {}
    for scenario, profile, res in _groups(matrix, results):
        if not res:
            continue
        mine = [
            {**r, "profile": profile}
            for r in tenant_rows(
                scenario, res, matrix.npages, matrix.accesses, block, cfg
            )
        ]
        rows += mine
        texts.append(
            f"[{profile}] " + format_report(scenario, mine, matrix.accesses, block)
        )
        summary[f"{scenario.name}/{profile}"] = {
            "liar": {
                v: liar_effect(mine, scenario.liar, v)
                for v in ("hypertier-liar", "hypertier-liar-huge")
                if scenario.liar
            },
            "ablation": ablation(mine, matrix.accesses),
        }
    return rows, "\n\n".join(texts), summary


def write_plots(
    out: Path, matrix: Matrix, results: Sequence[Mapping[str, object]]
) -> list[Path]:
    """``fast_allotment.png`` (the first scenario; ``fast_allotment_<scenario>.png``
    for the others, ``_<profile>`` added with several profiles): one panel per
    policy, one line per VM over time, dashed at its documented share.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    from emu.params import Params
    from emu.plots import write_allotment_plot

    cfg, block = _host_cfg(), Params().block_bytes
    written = []
    for scenario, profile, res in _groups(matrix, results):
        if not res:
            continue
        shares = scenario_shares(scenario, matrix.npages, block, cfg)
        panels = []
        for r in res:
            policy = str(_cell_field(r, "policy"))
            if policy == "all-fast":
                continue
            series = r["series"]
            assert isinstance(series, Mapping)
            lines = [
                (
                    vm.name,
                    list(series[vm.name]["t_s"]),
                    [x / MIB for x in series[vm.name][_series_key(policy)]],
                    shares[vm.name] / MIB,
                )
                for vm in scenario.vms
                if vm.name in series
            ]
            panels.append((policy, lines))
        name = "fast_allotment"
        if scenario.name != matrix.scenarios[0]:
            name += f"_{scenario.name}"
        if len(matrix.profiles) > 1:
            name += f"_{profile}"
        path = out / f"{name}.png"
        write_allotment_plot(
            path, f"{scenario.name} ({profile}): fast allotment vs share", panels
        )
        written.append(path)
    return written
