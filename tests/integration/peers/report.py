"""Table and plots of a peer run's report.json (text table, PNG per workload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emu.evaluation.report import text_table

from .peers import PEERS

TCG_NOTE = (
    "Under TCG (QEMU's software CPU) both guest nodes have the same latency: "
    "throughput shows each mechanism's overhead, not the speed of a tier."
)
BEST_SHARE = 0.9


def best_by_workload(report: dict[str, Any]) -> dict[str, float]:
    """Best steady hot-set share on node 0 reached by any peer, per workload."""
    best: dict[str, float] = {}
    for cell in report["cells"].values():
        steady = cell.get("metrics", {}).get("steady_hot_node0")
        if steady is not None:
            w = cell["workload"]
            best[w] = max(best.get(w, 0.0), float(steady))
    return best


def time_to_share(series: list[list[float]], share: float) -> float | None:
    """First sample time at or above ``share`` that the series never falls below
    again by more than 5 points; None if it never gets there."""
    for i, (t, f) in enumerate(series):
        if f >= share and all(g >= share - 0.05 for _, g in series[i:]):
            return float(t)
    return None


def add_derived(report: dict[str, Any]) -> None:
    """Fill ``time_to_90pct_best_s`` of each cell (needs every cell's steady value)."""
    best = best_by_workload(report)
    report["best_steady_hot_node0"] = best
    for cell in report["cells"].values():
        m = cell.get("metrics")
        if not m or cell["workload"] not in best:
            continue
        target = BEST_SHARE * best[cell["workload"]]
        m["time_to_90pct_best_s"] = time_to_share(m.get("series", []), target)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report of several runs' cells, a later run's cell replacing an
    earlier one's; ``sources`` says which run each cell came from (its
    accelerator, run time and errors). Derived figures are left to
    :func:`add_derived`, over the merged cells."""
    cells: dict[str, Any] = {}
    sources = []
    errors: dict[str, Any] = {}
    for i, r in enumerate(reports):
        cells.update(r.get("cells", {}))
        errors.update(r.get("errors", {}))
        sources.append(
            {
                "run": i,
                "accel": (r.get("accel") or {}).get("name"),
                "total_s": r.get("total_s"),
                "cells": sorted(r.get("cells", {})),
            }
        )
    work = list(dict.fromkeys(c["workload"] for c in cells.values()))
    peers = list(PEERS)

    def place(key: str) -> tuple[int, int]:
        c = cells[key]
        p = peers.index(c["peer"]) if c["peer"] in peers else len(peers)
        return work.index(c["workload"]), p

    keys = sorted(cells, key=place)
    last = reports[-1]
    return {
        "cells": {k: cells[k] for k in keys},
        "artefacts": last.get("artefacts", {}),
        "accel": last.get("accel"),
        "errors": errors,
        "sources": sources,
    }


def table(report: dict[str, Any]) -> str:
    """One row per cell: the figures of issue 12 item 4, or why the cell is empty."""
    header = (
        "workload",
        "peer",
        "initial",
        "steady",
        "t90 s",
        "promoted",
        "demoted",
        "migrated",
        "hint flt",
        "mech CPU s",
        "wl sys s",
        "TLB flush",
        "ops/s",
        "host load",
    )
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for cell in report["cells"].values():
        m = cell.get("metrics")
        if m is None:
            why = str(cell.get("error", "did not run")).splitlines()[0][:200]
            rows.append((cell["workload"], cell["peer"], *("-",) * 12))
            notes.append(f"{cell['peer']}/{cell['workload']} could not run: {why}")
            continue
        t90 = m.get("time_to_90pct_best_s")
        rows.append(
            (
                cell["workload"],
                cell["peer"],
                _f(m.get("initial_hot_node0")),
                _f(m.get("steady_hot_node0")),
                "never" if t90 is None else f"{t90:.0f}",
                str(m["pgpromote_success"]),
                str(m["pgdemote"]),
                str(m["pgmigrate_success"]),
                str(m["numa_hint_faults"]),
                f"{m['mechanism_cpu_s']:.1f}",
                f"{m['cpu'].get('workload_sys', 0.0):.1f}",
                str(m["tlb_flush_total"]),
                f"{m.get('ops_per_s_mean') or 0:.0f}",
                _f(cell.get("host_load_1min"), 1),
            )
        )
    text = text_table(header, rows, 2) + "\n"
    return text + "".join(n + "\n" for n in notes) + TCG_NOTE + "\n"


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    """hot-set share on node 0 over time, one PNG per workload, a line per peer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for cell in report["cells"].values():
        by_workload.setdefault(cell["workload"], []).append(cell)
    written: list[Path] = []
    for workload, cells in by_workload.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for cell in cells:
            series = cell.get("metrics", {}).get("series", [])
            if series:
                ax.plot(
                    [t for t, _ in series], [f for _, f in series], label=cell["peer"]
                )
        ax.set_title(f"{workload}: hot set on node 0 (fast)")
        ax.set_xlabel("time since the workload placed its pages (s)")
        ax.set_ylabel("share of hot pages on node 0")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"hot-node0-{workload}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
