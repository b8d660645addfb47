"""PNG plots of a report (report.json of ``run`` or ``compare``; matplotlib, Agg).

One entry point, :func:`write_plots`, reads the report document
(:mod:`emu.evaluation.report`): with one set-up, the time series of every VM
(placement, hit ratio, hit over the oracle's); with several, bars per memory
set-up (mean elapsed relative to all-fast, a bar per policy) and the hit ratio
over time per set-up; with the multi-tenant preset's ``tenants``, each VM's fast
allotment against its documented share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_allotment_plot", "write_plots"]

Doc = Mapping[str, Any]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "matplotlib is needed for the PNG plots: pip install 'hypertier[eval]'"
        ) from err
    return plt


def write_plots(out: Path, doc: Doc) -> list[Path]:
    """Every plot of the report ``doc`` into ``out``; returns the files written.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    plt = _pyplot()
    if "tenants" in doc:
        from emu.evaluation.tenant_report import write_allotment_plots

        return write_allotment_plots(out, doc)
    setups = {
        tuple(sorted((k, str(v)) for k, v in r["cell"].items() if k != "policy"))
        for r in doc["runs"]
    }
    if len(setups) == 1:
        return _timelines(plt, out, doc)
    return _bars(plt, out, doc["cells"]) + _hit_lines(plt, out, doc["runs"])


def _bars(plt: Any, out: Path, cells: Sequence[Mapping[str, Any]]) -> list[Path]:
    """bars_<profile>_1-<k>_<n>vm.png: elapsed / all-fast per workload and policy."""
    written: list[Path] = []
    setups = sorted(
        {(str(c["profile"]), str(c["ratio"]), int(str(c["vms"]))) for c in cells}
    )
    policies = list(dict.fromkeys(str(c["policy"]) for c in cells))
    workloads = list(dict.fromkeys(str(c["workload"]) for c in cells))
    for profile, ratio, vms in setups:
        mine = {
            (str(c["workload"]), str(c["policy"])): c["elapsed_s"]
            for c in cells
            if (c["profile"], c["ratio"], c["vms"]) == (profile, ratio, vms)
        }
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(workloads)), 3.4))
        width = 0.8 / max(1, len(policies))
        for j, pol in enumerate(policies):
            ys = []
            for wl in workloads:
                e, base = mine.get((wl, pol)), mine.get((wl, "all-fast"))
                ok = isinstance(e, int | float) and isinstance(base, int | float)
                ys.append(float(str(e)) / float(str(base)) if ok and base else 0.0)
            xs = [
                i + (j - (len(policies) - 1) / 2) * width for i in range(len(workloads))
            ]
            ax.bar(xs, ys, width, label=pol)
        ax.set_xticks(range(len(workloads)), workloads, rotation=20)
        ax.set_ylabel("elapsed / all-fast")
        ax.set_title(f"{profile}, fast:slow {ratio}, {vms} VM(s)")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"bars_{profile}_{ratio.replace(':', '-')}_{vms}vm.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _hit_lines(plt: Any, out: Path, runs: Sequence[Mapping[str, Any]]) -> list[Path]:
    """hit_<workload>_<profile>_1-<k>_<n>vm.png: vm1's hit ratio over time."""
    written: list[Path] = []
    groups: dict[tuple[str, str, str, int], list[Mapping[str, Any]]] = {}
    for r in runs:
        cell = r["cell"]
        assert isinstance(cell, dict)
        key = (cell["workload"], cell["profile"], f"1-{cell['ratio']}", cell["vms"])
        groups.setdefault(key, []).append(r)
    for (wl, profile, ratio, vms), rs in groups.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for r in rs:
            series = r["series"]
            assert isinstance(series, dict)
            s = series.get("vm1")
            cell = r["cell"]
            assert isinstance(cell, dict)
            if s and s["t_s"]:
                ax.plot(s["t_s"], s["fast_hit_ratio"], label=cell["policy"], lw=1)
        s0 = next((r["series"].get("vm1") for r in rs), None)
        if s0 and s0.get("oracle_hit"):
            ax.plot(s0["t_s"], s0["oracle_hit"], "k--", lw=0.8, label="oracle hit")
        ax.set_title(
            f"{wl}: vm1, {profile}, fast:slow {ratio.replace('-', ':')}, {vms} VM(s)"
        )
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel("fast-tier hit ratio\n(dashed: oracle, best static placement)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = str(wl).replace("trace:", "trace-").replace("/", "_")  # a file path
        path = out / f"hit_{name}_{profile}_{ratio}_{vms}vm.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _series(s: dict[str, list[float]], key: str) -> list[float]:
    if key != "hit_vs_oracle":
        return s[key]
    return [
        h / o if o > 0 else 0.0
        for h, o in zip(s["fast_hit_ratio"], s["oracle_hit"], strict=True)
    ]


def _timelines(plt: Any, out: Path, doc: Doc) -> list[Path]:
    """placement.png, hit_ratio.png and hit_vs_oracle.png over time, one panel
    per VM, a line per policy; hit_ratio.png shows the oracle's hit ratio dashed."""
    runs = doc["runs"]
    written = []
    vms = sorted({vm for r in runs for vm in r["series"]})
    for key, fname, ylabel in (
        (
            "placement",
            "placement.png",
            "expected hit of placement / oracle's\n(workload weights, pages on fast)",
        ),
        ("fast_hit_ratio", "hit_ratio.png", "fast-tier hit ratio (dashed: oracle)"),
        (
            "hit_vs_oracle",
            "hit_vs_oracle.png",
            "hit / oracle hit\n(best static placement of the phase, same fast size)",
        ),
    ):
        fig, axes = plt.subplots(
            1, len(vms), figsize=(4 * len(vms), 3.2), squeeze=False, sharey=True
        )
        for ax, vm in zip(axes[0], vms, strict=True):
            for r in runs:
                s = r["series"].get(vm)
                if s and s["t_s"]:
                    ax.plot(s["t_s"], _series(s, key), label=r["cell"]["policy"])
            first = next((r["series"][vm] for r in runs if r["series"].get(vm)), None)
            if key == "fast_hit_ratio" and first and "oracle_hit" in first:
                ax.plot(first["t_s"], first["oracle_hit"], "k--", lw=0.8)
            wl = next((row["workload"] for row in doc["rows"] if row["vm"] == vm), "")
            ax.set_title(f"{vm} ({wl})")
            ax.set_xlabel("virtual time (s)")
            ax.set_ylim(-0.02, 1.3 if key == "hit_vs_oracle" else 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


AllotmentLine = tuple[str, Sequence[float], Sequence[float], float]


def write_allotment_plot(
    path: Path, title: str, panels: Sequence[tuple[str, Sequence[AllotmentLine]]]
) -> None:
    """One panel per (policy, lines); a line is (VM, t_s, fast MiB, share MiB),
    drawn solid over time with its share dashed in the same colour.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    plt = _pyplot()
    n = max(1, len(panels))
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False, sharey=True
    )
    flat = [ax for row in axes for ax in row]
    for ax, (policy, lines) in zip(flat, panels, strict=False):
        for i, (vm, t_s, fast_mib, share_mib) in enumerate(lines):
            color = f"C{i % 10}"
            ax.plot(t_s, fast_mib, color=color, lw=1.2, label=vm)
            ax.axhline(share_mib, color=color, lw=0.8, ls="--")
        ax.set_title(policy, fontsize=9)
        ax.set_xlabel("virtual time (s)")
        ax.grid(alpha=0.3)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("fast memory (MiB); dashed: share")
    flat[0].legend(fontsize=6, loc="upper right", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
