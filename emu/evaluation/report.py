"""The evaluation's one report schema (report.json of ``run`` and ``compare``)
and its text tables.

report.json holds:

- ``meta``: what ran (``command``: "run" or "compare", its options, wall time,
  ``row_fields``);
- ``rows``: one per VM and run: the runner's :data:`ROW_FIELDS`, the set-up
  (``profile``, ``ratio`` "1:K" of slow to fast memory, ``vms``, ``seed``) and
  ``speedup_vs_<policy>`` against every other policy of the same set-up and VM;
- ``cells``: one per set-up and policy (:func:`summarize`: means over the VMs,
  summed counters, speedups); the multi-tenant preset's are its per-VM rows;
- ``runs``: one per run: ``cell`` (its set-up and policy), ``wall_s``,
  ``virtual_s``, ``accesses`` and ``series`` (per VM, per epoch), plus what the
  run's policy reports (``guest_channels``, ``host_shares``);
- ``tenants`` (multi-tenant preset only): the liar's effect and the ablation.

:func:`emu.evaluation.plots.write_plots` draws every plot from this document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from emu.evaluation.runner import COST_FIELDS, ORACLE_FIELDS, ROW_FIELDS

__all__ = [
    "CELL_KEYS",
    "MEAN_FIELDS",
    "SHORT_NAMES",
    "SUM_FIELDS",
    "add_speedups",
    "format_table",
    "report_doc",
    "run_entry",
    "summarize",
    "text_table",
    "write_json",
]

# Fields that identify a set-up; rows of one set-up differ only in ``policy``.
CELL_KEYS = ("workload", "profile", "ratio", "vms")
# Oracle yardsticks (emu.policies.oracle), averaged over a cell's VMs.
MEAN_FIELDS = ORACLE_FIELDS
# Costs, summed over a cell's VMs.
SUM_FIELDS = COST_FIELDS

SHORT_NAMES = {
    "fast_hit_ratio": "fast_hit",
    "oracle_hit": "oracle",
    "hit_vs_oracle": "hit/oracle",
    "ss_vs_oracle": "ss/oracle",
    "maccess_s_ss": "Macc/s_ss",
    "t90_change_s": "t90_chg",
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
    heads = [SHORT_NAMES.get(f, f) for f in fields]
    cells = [[_fmt(r.get(f)) for f in fields] for r in rows]
    return text_table(heads, cells, nleft=3, sep="  ")


def run_entry(
    cell: Mapping[str, object],
    wall_s: float,
    virtual_s: float,
    accesses: int,
    series: Mapping[str, Mapping[str, Sequence[float]]],
    **extra: object,
) -> dict[str, object]:
    """One element of report.json's ``runs``."""
    return {
        "cell": dict(cell),
        "wall_s": round(wall_s, 3),
        "virtual_s": round(virtual_s, 6),
        "accesses": accesses,
        "series": {vm: dict(s) for vm, s in series.items()},
        **extra,
    }


def report_doc(
    meta: Mapping[str, object],
    rows: Sequence[dict[str, object]],
    runs: Sequence[dict[str, object]],
    cells: Sequence[dict[str, object]] | None = None,
    **sections: object,
) -> dict[str, object]:
    """report.json: ``rows`` with their speedups, ``cells`` (default: the
    :func:`summarize` of the rows), ``runs`` and any further ``sections``."""
    return {
        "meta": {**meta, "row_fields": list(ROW_FIELDS)},
        "rows": add_speedups(rows),
        "cells": summarize(rows) if cells is None else list(cells),
        "runs": list(runs),
        **sections,
    }


def write_json(path: Path, doc: Mapping[str, object]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _key(row: dict[str, object]) -> tuple[object, ...]:
    return tuple(row[k] for k in CELL_KEYS)


def add_speedups(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Rows with ``speedup_vs_<policy>`` = that policy's elapsed / this row's.

    Compared VM by VM within the same set-up (workload, profile, ratio, VMs);
    None when either run did not finish.
    """
    elapsed: dict[tuple[object, ...], dict[str, float | None]] = {}
    for r in rows:
        e = r.get("elapsed_s")
        elapsed.setdefault((*_key(r), r["vm"]), {})[str(r["policy"])] = (
            float(e) if isinstance(e, int | float) else None
        )
    out = []
    for r in rows:
        mine = elapsed[(*_key(r), r["vm"])]
        row = dict(r)
        own = mine[str(r["policy"])]
        for p, e in mine.items():
            if p != r["policy"]:
                row[f"speedup_vs_{p}"] = (
                    round(e / own, 4) if e is not None and own else None
                )
        out.append(row)
    return out


def summarize(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One row per cell: mean elapsed, hit ratio and oracle yardsticks over its
    VMs, summed counters.

    Speedups compare mean elapsed times of the same set-up.
    """
    cells: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for r in rows:
        cells.setdefault((*_key(r), r["policy"]), []).append(r)
    out: list[dict[str, object]] = []
    for (*key, policy), rs in cells.items():
        el = [r["elapsed_s"] for r in rs]
        row: dict[str, object] = dict(zip(CELL_KEYS, key, strict=True))
        row["policy"] = policy
        row["elapsed_s"] = (
            round(sum(float(e) for e in el if isinstance(e, int | float)) / len(el), 6)
            if all(isinstance(e, int | float) for e in el)
            else None
        )
        row["fast_hit_ratio"] = round(
            sum(float(str(r["fast_hit_ratio"])) for r in rs) / len(rs), 4
        )
        for f in MEAN_FIELDS:  # None where any VM has none (never converged)
            vals = [r.get(f) for r in rs]
            row[f] = (
                round(sum(float(str(v)) for v in vals) / len(vals), 4)
                if all(isinstance(v, int | float) for v in vals)
                else None
            )
        for f in SUM_FIELDS:
            total = sum(float(str(r[f])) for r in rs)
            row[f] = round(total, 4) if f == "mgmt_cpu_s" else int(total)
        out.append(row)
    by_setup: dict[tuple[object, ...], dict[str, object]] = {}
    for row in out:
        by_setup.setdefault(_key(row), {})[str(row["policy"])] = row["elapsed_s"]
    for row in out:
        own = row["elapsed_s"]
        for p, e in by_setup[_key(row)].items():
            if p != row["policy"]:
                row[f"speedup_vs_{p}"] = (
                    round(float(str(e)) / float(str(own)), 3)
                    if isinstance(e, int | float) and isinstance(own, int | float)
                    else None
                )
    return out
