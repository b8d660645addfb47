"""The multi-tenant preset's analysis: each VM's fast allotment against its share.

:func:`tenant_rows` and :func:`format_report` compare every VM's steady-state
fast allotment with its documented share (emu.evaluation.tenants);
:func:`liar_effect` and :func:`ablation` summarise the variants; :func:`report`
and :func:`write_plots` are what ``hypertier compare`` calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_host import config as host_config
from emu.evaluation.report import text_table
from emu.evaluation.tenants import (
    DEMETER_PER_TIER_GAIN,
    MIB,
    SCENARIOS,
    Scenario,
    scenario_shares,
)
from emu.machine import PAGE_SIZE
from emu.policies.base import LIAR_VARIANTS

if TYPE_CHECKING:
    from emu.evaluation.compare import Matrix

__all__ = [
    "ablation",
    "format_report",
    "liar_effect",
    "report",
    "tenant_rows",
    "write_allotment_plots",
]


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
    for variant in LIAR_VARIANTS:
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
    from emu.policies.hypertier import HOST_TOML

    return host_config.loads(HOST_TOML, "<emu host>")


def _groups(
    scenarios: Sequence[str],
    profiles: Sequence[str],
    results: Sequence[Mapping[str, object]],
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
        for name in scenarios
        for profile in profiles
    ]


def report(
    matrix: Matrix, results: Sequence[Mapping[str, object]]
) -> tuple[list[dict[str, object]], str, dict[str, object]]:
    """The per-VM rows of every scenario and profile, the printed text, and per
    scenario/profile the liar's effect and the ablation (for report.json)."""
    from emu.machine.params import Params

    cfg, block = _host_cfg(), Params().block_bytes
    rows: list[dict[str, object]] = []
    texts: list[str] = []
    summary: dict[str, object] = {}
    for scenario, profile, res in _groups(matrix.scenarios, matrix.profiles, results):
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
                for v in LIAR_VARIANTS
                if scenario.liar
            },
            "ablation": ablation(mine, matrix.accesses),
        }
    return rows, "\n\n".join(texts), summary


def write_allotment_plots(out: Path, doc: Mapping[str, Any]) -> list[Path]:
    """``fast_allotment.png`` of a multi-tenant report (report.json's document;
    the first scenario; ``fast_allotment_<scenario>.png`` for the others,
    ``_<profile>`` added with several profiles): one panel per policy, one line
    per VM over time, dashed at its documented share.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    from emu.evaluation.plots import write_allotment_plot
    from emu.machine.params import Params

    cfg, block = _host_cfg(), Params().block_bytes
    matrix = doc["meta"]["matrix"]
    scenarios, profiles = matrix["scenarios"], matrix["profiles"]
    written = []
    for scenario, profile, res in _groups(scenarios, profiles, doc["runs"]):
        if not res:
            continue
        shares = scenario_shares(scenario, matrix["npages"], block, cfg)
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
        if scenario.name != scenarios[0]:
            name += f"_{scenario.name}"
        if len(profiles) > 1:
            name += f"_{profile}"
        path = out / f"{name}.png"
        write_allotment_plot(
            path, f"{scenario.name} ({profile}): fast allotment vs share", panels
        )
        written.append(path)
    return written
