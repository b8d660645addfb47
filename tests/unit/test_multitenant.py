"""The multi-tenant preset: documented shares, the lying guest, the balloon model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hypertier_wire as wire
from agent_host import config as host_config
from emu.evaluation.cli import main as cli_main
from emu.evaluation.compare import PRESETS, Cell, cells_of, run_cell, specs_of
from emu.evaluation.runner import build_world, run_scenario
from emu.evaluation.tenants import (
    SCENARIOS,
    BalloonPolicy,
    LyingGuestBackend,
    Scenario,
    ShareInput,
    TenantVm,
    documented_shares,
    make_scenario_policy,
    scenario_shares,
    share_inputs,
)
from emu.machine import FAST, PAGE_SIZE, World
from emu.machine.params import Params
from emu.policies.base import LIAR_VARIANTS
from emu.policies.hypertier import HOST_TOML, HyperTierPolicy
from emu.workloads import make_workload

MIB = 1 << 20
BLOCK = Params().block_bytes
CFG = host_config.loads(HOST_TOML, "<test>")
# Two VMs, the first lying: enough for the channel, small enough to be fast.
PAIR = Scenario(
    name="pair",
    vms=(TenantVm("liar", "bronze", 0.1), TenantVm("honest", "gold", 0.5)),
    policies=(
        "hypertier",
        "hypertier-liar",
        "hypertier-liar-huge",
        "hypertier-liar-flap",
        "balloon",
    ),
    liar="liar",
)


# ------------------------------------------------------------ documented share
def test_shares_of_the_tenants_preset_follow_the_class_weights() -> None:
    shares = scenario_shares(SCENARIOS["tenants"], 65_536, BLOCK, CFG)
    assert sum(shares.values()) == pytest.approx(512 * MIB)
    # Small hot sets (25.6 MiB, 91 % of the accesses) get their demand: 90 % of
    # the accesses, plus the mover's reserve (2 % of the fast memory it wants),
    # plus 10 % headroom.
    small = shares["gold-small"]
    for vm in ("silver-small", "bronze-small", "standard-small"):
        assert shares[vm] == pytest.approx(small)
    assert small == pytest.approx(25.6 * 0.9 / 0.91 / 0.98 * 1.1 * MIB, rel=0.01)
    # gold-big is capped by its demand (its share would be 4/16 of 512 MiB)
    assert shares["gold-big"] < 128 * MIB * 1.1 + 4.4 * MIB
    assert shares["silver-big"] == pytest.approx(2 * shares["bronze-big"])
    assert shares["bronze-big"] == pytest.approx(shares["standard-big"])


def test_everyone_gets_the_demand_when_it_fits() -> None:
    vms = [ShareInput(4, 10, 100), ShareInput(1, 20, 100)]
    assert documented_shares(1000, vms) == [10, 20]


def test_reservations_win_when_they_alone_exceed_the_capacity() -> None:
    vms = [ShareInput(4, 100, 100, 60), ShareInput(1, 100, 100, 60)]
    assert documented_shares(100, vms) == [60, 60]


_vm = st.builds(
    ShareInput,
    weight=st.sampled_from([1.0, 2.0, 4.0, 0.5, 7.5]),
    demand_bytes=st.floats(0, 1e4),
    limit_bytes=st.floats(0, 1e4),
    reservation_bytes=st.floats(0, 500),
)
_vms = st.lists(_vm, min_size=1, max_size=12)
_cap = st.floats(0, 3e4)


def _bounds(v: ShareInput) -> tuple[float, float]:
    lo = v.reservation_bytes
    return lo, max(lo, min(v.demand_bytes, v.limit_bytes))


@given(_cap, _vms)
def test_each_share_is_between_reservation_and_capped_demand(
    cap: float, vms: list[ShareInput]
) -> None:
    for v, s in zip(vms, documented_shares(cap, vms), strict=True):
        lo, hi = _bounds(v)
        assert lo - 1e-6 <= s <= hi + 1e-6


@given(_cap, _vms)
def test_shares_fill_the_capacity_unless_demands_or_floors_decide(
    cap: float, vms: list[ShareInput]
) -> None:
    total = sum(documented_shares(cap, vms))
    lo = sum(_bounds(v)[0] for v in vms)
    hi = sum(_bounds(v)[1] for v in vms)
    assert total == pytest.approx(min(max(cap, lo), hi), rel=1e-9, abs=1e-6)


@given(_cap, _vms)
def test_no_vm_below_its_cap_has_a_lower_weighted_share_than_one_above_its_floor(
    cap: float, vms: list[ShareInput]
) -> None:
    shares = documented_shares(cap, vms)
    for i, (vi, si) in enumerate(zip(vms, shares, strict=True)):
        for j, (vj, sj) in enumerate(zip(vms, shares, strict=True)):
            if i != j and si < _bounds(vi)[1] - 1e-6 and sj > _bounds(vj)[0] + 1e-6:
                assert si / vi.weight >= sj / vj.weight - 1e-6


@given(_cap, _vms, st.floats(0.1, 10))
def test_scaling_every_weight_changes_no_share(
    cap: float, vms: list[ShareInput], k: float
) -> None:
    scaled = [
        ShareInput(v.weight * k, v.demand_bytes, v.limit_bytes, v.reservation_bytes)
        for v in vms
    ]
    assert documented_shares(cap, scaled) == pytest.approx(
        documented_shares(cap, vms), rel=1e-6, abs=1e-6
    )


@given(_cap, _cap, _vms)
def test_more_capacity_takes_nothing_from_anyone(
    a: float, b: float, vms: list[ShareInput]
) -> None:
    small, large = sorted((a, b))
    for s, t in zip(
        documented_shares(small, vms), documented_shares(large, vms), strict=True
    ):
        assert t >= s - 1e-6


# ------------------------------------------------------------------ scenarios
def test_tenants_preset_oversubscribes_fast_memory_with_hot_sets() -> None:
    sc = SCENARIOS["tenants"]
    specs = sc.specs(65_536, 1, BLOCK)
    assert len(specs) == 8
    assert {s.qos_class for s in specs} == {"gold", "silver", "bronze", "standard"}
    assert len({s.fast_bytes for s in specs}) == 1  # equal start
    demand = sum(i.demand_bytes for i in share_inputs(specs, CFG, BLOCK))
    host = sc.host_fast_bytes(65_536, BLOCK)
    assert host == 512 * MIB
    assert demand > 1.2 * host  # hot sets of 614.4 MiB, as the guests report them
    shares = scenario_shares(sc, 65_536, BLOCK, CFG)
    for s in specs:
        assert (s.fast_max_bytes or 0) >= shares[s.name]  # reachable
        assert (s.fast_reservation_bytes or 0) <= 8 * MIB


def test_liar_is_a_low_class_vm_with_a_small_hot_set() -> None:
    sc = SCENARIOS["tenants"]
    (liar,) = [v for v in sc.vms if v.name == sc.liar]
    assert CFG.weight(liar.qos_class) == min(CFG.weight(v.qos_class) for v in sc.vms)
    assert liar.hot_fraction == min(v.hot_fraction for v in sc.vms)


def test_spec_hot_fraction_is_the_workloads_hot_region() -> None:
    (spec, _) = PAIR.specs(4096, 1, BLOCK)
    wl = make_workload(spec.workload, spec.npages, **dict(spec.workload_options))
    hot = int(0.1 * 4096)
    rates = wl.rates()
    assert rates[wl.hot_set(hot)].sum() == pytest.approx(0.9 + 0.1 * 0.1, abs=0.01)


def test_preset_cells_run_each_scenario_with_its_policies() -> None:
    cells = cells_of(PRESETS["multi-tenant"])
    by = {(c.scenario, c.policy) for c in cells}
    assert len(cells) == len(by) == 11
    assert {("tenants", v) for v in LIAR_VARIANTS} <= by
    assert ("gups", "hypertier-liar") not in by
    assert {c.vms for c in cells} == {8}
    tenants = next(c for c in cells if c.scenario == "tenants")
    assert [s.name for s in specs_of(tenants)] == [v.name for v in SCENARIOS[
        "tenants"].vms]  # fmt: skip


# ------------------------------------------------------------------- the liar
def _world() -> World:
    w = World(64 * MIB, 256 * MIB)
    w.add_vm("vm", 2, 16 * MIB, 64 * MIB, 64 * MIB)
    return w


def _honest(seq: int = 1) -> wire.Report:
    return wire.Report(
        seq,
        (
            wire.NodeUsage(0, "fast", 16 * MIB, 12 * MIB),
            wire.NodeUsage(1, "slow", 64 * MIB, 3 * MIB),
        ),
        hot_bytes=5 * MIB,
        pressure=0.2,
        pages_moved=7,
    )


@pytest.mark.parametrize("claim", [None, 1 << 40], ids=["true-totals", "huge"])
def test_liar_reports_are_valid_maximal_claims(claim: int | None) -> None:
    w = _world()
    backend = LyingGuestBackend(w, "vm", claim_node_bytes=claim)
    backend.channel_send(wire.encode(_honest()))
    lie = wire.decode(bytes(w.vm("vm").to_host).rstrip(b"\n"))
    assert isinstance(lie, wire.Report)
    assert all(n.used_bytes == n.total_bytes for n in lie.nodes)
    assert lie.hot_bytes == sum(n.total_bytes for n in lie.nodes)
    assert lie.pressure == 1.0
    assert (lie.seq, lie.pages_moved) == (1, 7)
    if claim is not None:
        assert {n.total_bytes for n in lie.nodes} == {claim}


def test_a_flapping_liar_claims_everything_and_nothing_in_turn() -> None:
    w = _world()
    backend = LyingGuestBackend(w, "vm", flap_s=0.5)
    hot = []
    for _ in range(6):  # reports at 0, 0.25, ..., 1.25 s
        vm = w.vm("vm")
        vm.to_host.clear()
        backend.channel_send(wire.encode(_honest()))
        lie = wire.decode(bytes(vm.to_host).rstrip(b"\n"))
        assert isinstance(lie, wire.Report)
        hot.append(lie.hot_bytes)
        w.clock.advance(0.25)
    full = sum(n.total_bytes for n in _honest().nodes)
    assert hot == [full, full, 0, 0, full, full]
    with pytest.raises(ValueError, match="flap_s"):
        LyingGuestBackend(w, "vm", flap_s=0.0)


def test_liar_passes_hellos_and_reassembles_split_lines() -> None:
    w = _world()
    backend = LyingGuestBackend(w, "vm")
    hello = wire.encode(wire.Hello("hypertier-guest", "0.1.0"))
    line = wire.encode(_honest())
    backend.channel_send(hello + line[:9])
    backend.channel_send(line[9:])
    first, second, rest = bytes(w.vm("vm").to_host).split(b"\n")
    assert first + b"\n" == hello
    assert rest == b""
    assert backend.lies == 1
    assert wire.decode(second).hot_bytes == 80 * MIB  # type: ignore[union-attr]


@pytest.mark.slow
def test_host_agent_accepts_the_liars_reports_and_reads_its_claim() -> None:
    specs = PAIR.specs(1024, 10**9, BLOCK)
    policy = make_scenario_policy("hypertier-liar", PAIR)
    assert isinstance(policy, HyperTierPolicy)
    run_scenario(
        specs,
        policy,
        epoch_s=0.01,
        max_s=0.3,
        seed=1,
        host_fast_bytes=PAIR.host_fast_bytes(1024, BLOCK),
    )
    guest = policy.host_status()["vms"]["liar"]["guest"]  # type: ignore[index]
    assert guest["messages"] >= 3
    assert guest["invalid"] == 0
    # the claim is everything the guest has: both nodes, full
    spec = specs[0]
    assert guest["hot_bytes"] == spec.fast_bytes + spec.slow_bytes
    assert guest["pressure"] == 1.0


# --------------------------------------------------------- the balloon model
def test_balloon_backs_fast_memory_first_come_first_served_and_conserves_pages() -> (
    None
):
    sc = SCENARIOS["tenants"]
    npages = 4096
    policy = BalloonPolicy()
    specs = list(policy.adjust(sc.specs(npages, 10**9, BLOCK)))
    host_fast = sc.host_fast_bytes(npages, BLOCK)
    host_slow = sc.host_slow_bytes(npages, BLOCK)
    assert sum(s.fast_bytes for s in specs) > host_fast  # not controlled per tier
    world, pids = build_world(specs, Params(), 1, host_fast, host_slow)
    policy.attach(world, pids)
    for _ in range(20):
        world.clock.advance(0.01)
        policy.tick(world, 0.01)
        world.check_invariants()
    held = [int((world.vm(s.name).f.host == FAST).sum()) * PAGE_SIZE for s in specs]
    assert sum(held) == host_fast  # the host's fast node is used up ...
    for hn in world.host_nodes:  # ... and no host node beyond its capacity
        assert hn.used_pages <= hn.capacity_pages
    assert held[0] == npages * PAGE_SIZE  # ... the first VM booted holds all it touched
    assert held[-1] == 0  # and the last none, whatever its class
    for s in specs:  # the total each VM has is the same as with per-tier tiers
        vm = world.vm(s.name)
        assert sum(vm.plugged) * PAGE_SIZE == pytest.approx(
            (sc.fast_fraction + sc.slow_fraction) * npages * PAGE_SIZE, abs=BLOCK
        )
    policy.close()


# ------------------------------------------------------ a small preset, end to end
def _small(policy: str, scenario: str = "tenants") -> Cell:
    return Cell("", policy, "cxl", 4, 8, 1024, 200_000, 0.01, 5.0, 1, scenario)


@pytest.mark.slow
def test_small_preset_writes_per_vm_rows_liar_summary_and_allotment_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli_main(
        ["compare", "--preset", "multi-tenant", "--scenarios", "tenants",
         "--policies", "all-fast,hypertier,hypertier-liar,balloon", "--pages",
         "1024", "--accesses", "300000", "--max-s", "5", "--jobs", "1", "--out",
         str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "hypertier-liar: bronze-small lying vs honest" in text
    assert "ablation: GUPS throughput" in text
    doc = json.loads((tmp_path / "report.json").read_text())
    rows = doc["cells"]
    assert {r["policy"] for r in rows} == {
        "all-fast", "hypertier", "hypertier-liar", "balloon"
    }  # fmt: skip
    assert len(rows) == 4 * 8
    assert all(r["share_bytes"] > 0 for r in rows)
    assert all(
        isinstance(r["host_share_bytes"], int)
        for r in rows
        if r["policy"] == "hypertier"
    )
    assert doc["tenants"]["tenants/cxl"]["liar"]["hypertier-liar"]["liar"] == (
        "bronze-small"
    )
    assert (tmp_path / "fast_allotment.png").stat().st_size > 0
    for r in doc["runs"]:
        for ser in r["series"].values():
            assert len(ser["fast_plugged_bytes"]) == len(ser["t_s"])


def test_scenario_cells_run_the_variants_by_name() -> None:
    out = run_cell(_small("hypertier-liar"))
    assert {r["policy"] for r in out["rows"]} == {"hypertier-liar"}  # type: ignore[attr-defined]
    assert {r["scenario"] for r in out["rows"]} == {"tenants"}  # type: ignore[attr-defined]
    channels = out["guest_channels"]  # the host agent's view of each VM
    assert isinstance(channels, dict)
    assert set(channels) == {v.name for v in SCENARIOS["tenants"].vms}
    assert all("invalid" in c for c in channels.values())
    shares = out["host_shares"]  # the host agent's share of each VM, per tick
    assert isinstance(shares, dict)
    assert shares
    for ser in shares.values():
        assert len(ser["t_s"]) == len(ser["fast_share_bytes"]) > 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        pytest.param(["--preset", "smoke", "--scenarios", "tenants"],
                     "needs a scenario preset", id="scenarios-without-preset"),
        pytest.param(["--preset", "multi-tenant", "--workloads", "gups"],
                     "fixed VM sets", id="workloads-with-scenarios"),
        pytest.param(["--preset", "multi-tenant", "--scenarios", "nope"],
                     "scenario ['nope'] unknown", id="unknown-scenario"),
        pytest.param(["--preset", "multi-tenant", "--policies", "liar"],
                     "policy ['liar'] unknown", id="unknown-variant"),
    ],
)  # fmt: skip
def test_compare_rejects_flags_that_do_not_fit_a_scenario_preset(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli_main(["compare", *argv, "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err


@settings(deadline=None, max_examples=5)
@given(st.sampled_from(sorted(SCENARIOS)))
def test_every_scenario_has_what_its_policies_need(name: str) -> None:
    sc = SCENARIOS[name]
    assert ("hypertier-liar" in sc.policies) == (sc.liar is not None)
    assert {"hypertier", "balloon"} <= set(sc.policies)
