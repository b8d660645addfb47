"""``hypertier compare``: run a matrix of workloads x policies x memory setups.

Flags override the preset's matrix (:mod:`emu.evaluation.compare`); the run
prints the table and writes report.json, report.csv, table.txt and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from emu.evaluation.compare import (
    CAPACITY_OVER_FOOTPRINT,
    PRESETS,
    Cell,
    Matrix,
    cells_of,
    format_cells,
    run_matrix,
    write_csv,
)
from emu.evaluation.plots import write_plots
from emu.evaluation.report import report_doc, run_entry, write_json
from emu.machine.params import PROFILES
from emu.policies import ORACLE_NAMES, POLICY_NAMES
from emu.workloads import TRACE_PREFIX, workload_pages

__all__ = ["EPILOG", "add_arguments", "main"]

EPILOG = """examples:
  hypertier compare --out cmp                     # the default matrix, 2 jobs
  hypertier compare --preset seed-gups --out seed # GUPS, host TPP's flush storm
  hypertier compare --preset multi-tenant --out mt # 8 VMs in 4 QoS classes, a
      # lying guest, tier-unaware balloons; per-VM table and fast_allotment.png
  hypertier compare --preset multi-tenant --scenarios tenants \\
      --policies hypertier,hypertier-liar --accesses 20000000 --out /tmp/mt
  hypertier compare --workloads gups,btree --policies none,memtis,hypertier \\
      --profiles cxl --ratios 1:2 --vms 1,4 --jobs 2 --out /tmp/cmp
"""


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _ratio(text: str) -> int:
    fast, sep, slow = text.partition(":")
    if not sep or fast.strip() != "1" or not slow.strip().isdigit():
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not of the form 1:K")
    return int(slow)


def trace_layout(text: str) -> str:
    """A ``--trace-layout`` value: one of :data:`emu.workloads.trace.LAYOUTS`."""
    from emu.workloads.trace import LAYOUTS

    if text not in LAYOUTS:
        raise argparse.ArgumentTypeError(
            f"trace layout {text!r} is not one of {', '.join(LAYOUTS)}"
        )
    return text


# The flags that override a field of the preset's Matrix, in --help order:
# (flag, the Matrix field, the parser of its value, help).
_OVERRIDES: tuple[tuple[str, str, Callable[[str], object], str], ...] = (
    ("--workloads", "workloads", _names, "comma-separated workloads"),
    (
        "--scenarios",
        "scenarios",
        _names,
        "comma-separated VM sets of a scenario preset (multi-tenant: tenants,gups)",
    ),
    (
        "--policies",
        "policies",
        _names,
        f"comma-separated, from {','.join(POLICY_NAMES)}",
    ),
    ("--profiles", "profiles", _names, "memory profiles: cxl,pmem"),
    (
        "--ratios",
        "ratios",
        lambda s: tuple(_ratio(x) for x in _names(s)),
        "fast:slow ratios, e.g. 1:2,1:5",
    ),
    (
        "--vms",
        "vms",
        lambda s: tuple(int(x) for x in _names(s)),
        "VM counts, e.g. 1,4,9",
    ),
    ("--pages", "npages", int, "footprint per VM (4 KiB pages)"),
    ("--accesses", "accesses", int, "LLC misses per VM"),
    (
        "--trace-accesses",
        "trace_accesses",
        int,
        "LLC misses per VM of trace workloads (default: the preset's; "
        "--accesses alone sets both)",
    ),
    (
        "--trace-layout",
        "trace_layout",
        trace_layout,
        "where a trace's pages sit in the replayed mapping: touch (first-touch "
        "order, the default) or address (recorded address order, holes left out)",
    ),
    ("--epoch-s", "epoch_s", float, "policy epoch (virtual s)"),
    ("--max-s", "max_s", float, "virtual time limit per run"),
    ("--seed", "seed", int, "random seed of every cell"),
)


def _dest(flag: str) -> str:
    """The attribute argparse stores ``--flag-name`` in."""
    return flag.removeprefix("--").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` subcommand's flags; each overrides the preset's value."""
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="default", help="base matrix"
    )
    parser.add_argument("--out", type=Path, default=Path("hypertier-compare"))
    for flag, _, parse, text in _OVERRIDES:
        parser.add_argument(flag, type=parse, help=text)
    parser.add_argument(
        "--jobs", type=int, default=2, help="worker processes (default: %(default)s)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the per-cell rows as JSON"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _matrix(args: argparse.Namespace) -> Matrix:
    over = {field: getattr(args, _dest(flag)) for flag, field, _, _ in _OVERRIDES}
    m = replace(
        PRESETS[args.preset], **{k: v for k, v in over.items() if v is not None}
    )
    if args.accesses is not None and args.trace_accesses is None:
        m = replace(m, trace_accesses=None)  # --accesses alone sizes every run
    return m


def _check(m: Matrix, args: argparse.Namespace) -> str | None:
    from emu.evaluation.tenants import SCENARIOS
    from emu.policies.base import VARIANT_NAMES
    from emu.workloads import WORKLOADS

    if m.scenarios or args.scenarios:
        if not PRESETS[args.preset].scenarios:
            return f"--scenarios needs a scenario preset, not {args.preset!r}"
        fixed = [f for f in ("workloads", "ratios", "vms") if getattr(args, f)]
        if fixed:
            return f"--{', --'.join(fixed)}: preset {args.preset!r} has fixed VM sets"
        for what, given, choices in (
            ("scenario", m.scenarios, tuple(SCENARIOS)),
            ("policy", m.policies, (*POLICY_NAMES, *VARIANT_NAMES)),
            ("profile", m.profiles, tuple(PROFILES)),
        ):
            wrong = [n for n in given if n not in choices]
            if wrong or not given:
                return (
                    f"{what} {wrong or '(none)'} unknown; choose from {sorted(choices)}"
                )
        if m.npages < 1024 or m.accesses < 1 or m.epoch_s <= 0 or m.max_s <= 0:
            return "--pages >= 1024, --accesses, --epoch-s and --max-s > 0 needed"
        return None
    traces = tuple(w for w in m.workloads if w.startswith(TRACE_PREFIX))
    for kind, names, known in (
        ("workload", m.workloads, (*WORKLOADS, *traces)),
        ("policy", m.policies, (*POLICY_NAMES, *ORACLE_NAMES)),
        ("profile", m.profiles, PROFILES),
    ):
        bad = [n for n in names if n not in known]
        if bad or not names:
            return f"{kind} {bad or '(none)'} unknown; choose from {sorted(known)}"
    for w in traces:
        try:
            workload_pages(w, 0)
        except ValueError as err:
            return str(err)
    if min(m.vms, default=0) < 1 or min(m.ratios, default=0) < 1:
        return "--vms and --ratios need values >= 1"
    if m.npages < 1024 or m.accesses < 1 or m.epoch_s <= 0 or m.max_s <= 0:
        return "--pages >= 1024, --accesses, --epoch-s and --max-s > 0 needed"
    if m.trace_accesses is not None and m.trace_accesses < 1:
        return "--trace-accesses must be > 0"
    return None


def main(args: argparse.Namespace) -> int:
    """Run the matrix, print the table, write report.json/.csv and plots."""
    matrix = _matrix(args)
    problem = _check(matrix, args)
    if problem is not None or args.jobs < 1:
        print(f"hypertier compare: {problem or '--jobs must be >= 1'}", file=sys.stderr)
        return 2
    policies = matrix.policies
    cells = cells_of(matrix)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shape = (
        f"{len(matrix.scenarios)} scenarios x {len(policies)} policies (those each "
        f"runs) x {len(matrix.profiles)} profiles"
        if matrix.scenarios
        else f"{len(matrix.workloads)} workloads x {len(policies)} policies x "
        f"{len(matrix.profiles)} profiles x {len(matrix.ratios)} ratios x "
        f"{len(matrix.vms)} VM counts"
    )
    print(
        f"hypertier compare: {len(cells)} cells ({shape}), {args.jobs} jobs",
        file=sys.stderr,
    )
    t0 = time.perf_counter()

    def progress(done: int, total: int, cell: Cell, res: dict[str, object]) -> None:
        wall = res.get("wall_s", 0.0)
        print(
            f"  [{done:>4}/{total}] {cell.label:<36} {float(str(wall)):6.1f} s  "
            f"(total {time.perf_counter() - t0:6.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    results = run_matrix(cells, jobs=args.jobs, progress=progress)
    wall = time.perf_counter() - t0
    rows: list[dict[str, object]] = [
        row
        for r in results
        for row in r["rows"]  # type: ignore[attr-defined]
    ]
    runs = [
        run_entry(
            r["cell"],  # type: ignore[arg-type]
            float(str(r["wall_s"])),
            float(str(r["virtual_s"])),
            int(str(r["accesses"])),
            r["series"],  # type: ignore[arg-type]
            **{k: r[k] for k in ("guest_channels", "host_shares") if k in r},
        )
        for r in results
    ]
    meta = {
        "command": "compare",
        "preset": args.preset,
        "matrix": asdict(matrix),
        "capacity_over_footprint": CAPACITY_OVER_FOOTPRINT,
        "jobs": args.jobs,
        "wall_s": round(wall, 2),
    }
    if matrix.scenarios:
        from emu.evaluation.tenant_report import report

        table, text, tenants = report(matrix, results)
        doc = report_doc(meta, rows, runs, cells=table, tenants=tenants)
    else:
        doc = report_doc(meta, rows, runs)
        text = format_cells(doc["cells"], policies)  # type: ignore[arg-type]
    write_json(out / "report.json", doc)
    write_csv(out / "report.csv", doc["rows"])  # type: ignore[arg-type]
    (out / "table.txt").write_text(text + "\n")
    print(json.dumps(doc["cells"], indent=1) if args.json else text)
    if not args.no_plots:
        try:
            paths = write_plots(out, doc)
            print(f"hypertier compare: {len(paths)} plots in {out}", file=sys.stderr)
        except ImportError as err:
            print(f"hypertier compare: no plots: {err}", file=sys.stderr)
    print(
        f"hypertier compare: wrote {out / 'report.json'}, report.csv, table.txt "
        f"in {wall:.1f} s",
        file=sys.stderr,
    )
    return 0
