"""Render evaluation results: a text table, report.json and PNG plots.

Plots use matplotlib (Agg backend, imported lazily); without it the table and
JSON are still written and :func:`write_plots` says why there are no PNGs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from emu.evaluation.runner import ROW_FIELDS, RunResult

__all__ = ["format_table", "text_table", "write_json", "write_plots"]

_SHORT = {
    "fast_hit_ratio": "fast_hit",
    "oracle_hit": "oracle",
    "hit_vs_oracle": "hit/oracle",
    "t90_phase_s": "t90_phase",
    "remote_tlb_flush": "remote_tlb",
    "tlb_local_flush_one": "local_one",
    "tlb_local_flush_all": "local_all",
    "tlb_remote_flush": "guest_remote",
}


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def text_table(
    heads: Sequence[str],
    body: Sequence[Sequence[str]],
    nleft: int,
    sep: str = " ",
) -> str:
    """Fixed-width columns under a dashed rule: the first ``nleft`` columns
    left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(heads)]
    lines = [sep.join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines.append(sep.join("-" * w for w in widths))
    lines += [
        sep.join(
            v.ljust(w) if i < nleft else v.rjust(w)
            for i, (v, w) in enumerate(zip(b, widths, strict=True))
        )
        for b in body
    ]
    return "\n".join(lines)


def format_table(
    rows: Sequence[dict[str, object]], fields: Sequence[str] = ROW_FIELDS
) -> str:
    """A fixed-width text table of ``rows`` (one line per row)."""
    heads = [_SHORT.get(f, f) for f in fields]
    cells = [[_fmt(r.get(f)) for f in fields] for r in rows]
    return text_table(heads, cells, nleft=3, sep="  ")


def write_json(
    path: Path, results: Sequence[RunResult], meta: dict[str, object]
) -> None:
    """report.json: ``rows`` (one per VM x policy), ``series`` and run metadata."""
    doc = {
        "meta": meta,
        "rows": [row for r in results for row in r.rows],
        "series": {r.policy: r.series for r in results},
        "runs": [
            {
                "policy": r.policy,
                "wall_s": round(r.wall_s, 3),
                "virtual_s": round(r.virtual_s, 6),
                "accesses": r.accesses,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _series(s: dict[str, list[float]], key: str) -> list[float]:
    if key != "hit_vs_oracle":
        return s[key]
    return [
        h / o if o > 0 else 0.0
        for h, o in zip(s["fast_hit_ratio"], s["oracle_hit"], strict=True)
    ]


def write_plots(out: Path, results: Sequence[RunResult]) -> list[Path]:
    """placement.png, hit_ratio.png and hit_vs_oracle.png over time, one panel
    per VM; hit_ratio.png shows the oracle's hit ratio dashed.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "matplotlib is needed for the PNG plots: pip install 'hypertier[eval]'"
        ) from err
    written = []
    vms = sorted({vm for r in results for vm in r.series})
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
            for r in results:
                s = r.series.get(vm)
                if s and s["t_s"]:
                    ax.plot(s["t_s"], _series(s, key), label=r.policy)
            first = next((r.series[vm] for r in results if r.series.get(vm)), None)
            if key == "fast_hit_ratio" and first and "oracle_hit" in first:
                ax.plot(first["t_s"], first["oracle_hit"], "k--", lw=0.8)
            wl = next(
                (row["workload"] for r in results for row in r.rows if row["vm"] == vm),
                "",
            )
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
