"""``hypertier compare``: run a matrix of workloads x policies x memory setups.

Each cell (workload, policy, memory profile, fast:slow ratio, VM count) runs
:func:`emu.evaluate.run_scenario` in a worker process, deterministic under its
seed. The results are one row per VM (report.json, report.csv), a table per
cell with speedups over every other policy of the same set-up, and PNG plots.
A preset may instead name scenarios (explicit VM sets, :mod:`emu.multitenant`):
its cells are scenario x profile x policy and its table is per VM.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from emu.evaluate import ROW_FIELDS, run_scenario
from emu.params import PROFILES, Params
from emu.policy import ORACLE_NAMES, POLICY_NAMES, Policy, VmSpec
from emu.report import text_table
from emu.workloads import TRACE_PREFIX, workload_pages
from emu.world import PAGE_SIZE

__all__ = [
    "CELL_KEYS",
    "PRESETS",
    "Cell",
    "Matrix",
    "add_arguments",
    "add_speedups",
    "cells_of",
    "format_cells",
    "main",
    "run_cell",
    "run_matrix",
    "specs_of",
    "summarize",
]

EPILOG = """examples:
  hypertier compare --out cmp                     # the default matrix, 2 jobs
  hypertier compare --preset seed-gups --out seed # the seed's motivating GUPS case
  hypertier compare --preset multi-tenant --out mt # 8 VMs in 4 QoS classes, a
      # lying guest, tier-unaware balloons; per-VM table and fast_allotment.png
  hypertier compare --preset multi-tenant --scenarios tenants \\
      --policies hypertier,hypertier-liar --accesses 20000000 --out /tmp/mt
  hypertier compare --workloads gups,btree --policies none,memtis,hypertier \\
      --profiles cxl --ratios 1:2 --vms 1,4 --jobs 2 --out /tmp/cmp
"""

# LLC misses per VM of the multi-tenant preset: several emulated seconds.
MULTI_TENANT_ACCESSES = 80_000_000
# Memory per VM is the footprint plus this much free memory, split fast:slow.
CAPACITY_OVER_FOOTPRINT = 1.25
# Fields that identify a set-up; rows of one set-up differ only in ``policy``.
CELL_KEYS = ("workload", "profile", "ratio", "vms")
# Oracle yardsticks (emu.oracle), averaged over a cell's VMs.
MEAN_FIELDS = ("oracle_hit", "hit_vs_oracle", "hit_ss", "t90_s")
SUM_FIELDS = (
    "tlb_flush",
    "remote_tlb_flush",
    "tlb_local_flush_one",
    "tlb_local_flush_all",
    "tlb_remote_flush",
    "pages_moved",
    "mgmt_cpu_s",
)


@dataclass(frozen=True)
class Matrix:
    """The dimensions of a comparison and the size of each run."""

    workloads: tuple[str, ...]
    policies: tuple[str, ...]
    profiles: tuple[str, ...] = ("cxl", "pmem")
    ratios: tuple[int, ...] = (2, 5)  # 1:k fast:slow
    vms: tuple[int, ...] = (1, 4)
    npages: int = 65_536  # footprint per VM, 4 KiB pages (256 MiB)
    accesses: int = 8_000_000  # LLC misses per VM
    epoch_s: float = 0.01
    max_s: float = 30.0
    seed: int = 1
    # explicit VM sets (emu.multitenant.SCENARIOS); with any, the cells are
    # scenario x profile x policy and workloads, ratios and vms are unused
    scenarios: tuple[str, ...] = ()


PRESETS: dict[str, Matrix] = {
    "default": Matrix(
        workloads=(
            "gups",
            "kv-zipf",
            "btree",
            "bfs",
            "pagerank",
            "xsbench",
            "liblinear",
        ),
        policies=POLICY_NAMES,
    ),
    # Demeter (SOSP'25) motivating table: GUPS in one VM, footprint 4x the fast
    # tier, host TPP vs guest TPP vs guest PML (vTMM) vs none vs ours.
    "seed-gups": Matrix(
        workloads=("gups",),
        policies=("none", "all-fast", "tpp-host", "tpp-guest", "vtmm", "hypertier"),
        profiles=("cxl", "pmem"),
        ratios=(4,),
        vms=(1,),
        npages=65_536,
        accesses=100_000_000,
        epoch_s=0.01,
    ),
    # 8 VMs in 4 QoS classes whose hot sets exceed the host's fast memory, one
    # lying guest, and one tier-unaware allotment per VM (docs/baselines.md).
    "multi-tenant": Matrix(
        workloads=(),
        policies=(
            "none",
            "all-fast",
            "hypertier",
            "hypertier-liar",
            "hypertier-liar-huge",
            "balloon",
        ),
        profiles=("cxl",),
        ratios=(),
        vms=(),
        npages=65_536,
        accesses=MULTI_TENANT_ACCESSES,
        epoch_s=0.01,
        scenarios=("tenants", "gups"),
    ),
    "smoke": Matrix(
        workloads=("gups",),
        policies=("none", "all-fast"),
        profiles=("cxl",),
        ratios=(2,),
        vms=(1,),
        npages=4096,
        accesses=1_000_000,
    ),
}


@dataclass(frozen=True)
class Cell:
    """One run: a policy on ``vms`` VMs of ``workload`` with a 1:``ratio`` split."""

    workload: str
    policy: str
    profile: str
    ratio: int
    vms: int
    npages: int
    accesses: int
    epoch_s: float
    max_s: float
    seed: int
    scenario: str = ""  # an explicit VM set; then workload is unused

    @property
    def label(self) -> str:
        if self.scenario:
            return f"{self.scenario}/{self.policy}/{self.profile}/{self.vms}vm"
        return (
            f"{self.workload}/{self.policy}/{self.profile}/1:{self.ratio}/{self.vms}vm"
        )


def cells_of(matrix: Matrix) -> list[Cell]:
    """Every cell of ``matrix``, in a fixed order (set-up major, policy minor).

    With scenarios: scenario x profile x the policies the scenario runs.
    """
    if matrix.scenarios:
        from emu.multitenant import SCENARIOS

        return [
            Cell("", p, prof, SCENARIOS[sc].ratio(), len(SCENARIOS[sc].vms),
                 matrix.npages, matrix.accesses, matrix.epoch_s, matrix.max_s,
                 matrix.seed, scenario=sc)
            for sc in matrix.scenarios
            for prof in matrix.profiles
            for p in matrix.policies
            if p in SCENARIOS[sc].policies
        ]  # fmt: skip
    return [
        Cell(w, p, prof, r, n, matrix.npages, matrix.accesses, matrix.epoch_s,
             matrix.max_s, matrix.seed)
        for w in matrix.workloads
        for prof in matrix.profiles
        for r in matrix.ratios
        for n in matrix.vms
        for p in matrix.policies
    ]  # fmt: skip


def specs_of(cell: Cell) -> list[VmSpec]:
    """The VMs of a cell: ``vms`` copies of the workload, seeds 1..vms.

    Each VM gets ``CAPACITY_OVER_FOOTPRINT`` x its footprint, split 1:ratio
    between the fast and the slow node. A scenario cell has the scenario's VMs.
    """
    if cell.scenario:
        from emu.multitenant import SCENARIOS

        block = Params().block_bytes
        return SCENARIOS[cell.scenario].specs(cell.npages, cell.accesses, block)
    npages = workload_pages(cell.workload, cell.npages)  # a trace has its own
    total = npages * PAGE_SIZE * CAPACITY_OVER_FOOTPRINT
    fast = int(total / (1 + cell.ratio))
    slow = int(total - fast)
    return [
        VmSpec(
            name=f"vm{i + 1}",
            workload=cell.workload,
            npages=npages,
            fast_bytes=fast,
            slow_bytes=slow,
            total_accesses=cell.accesses,
            seed=i + 1,
        )
        for i in range(cell.vms)
    ]


def run_cell(cell: Cell) -> dict[str, object]:
    """Run one cell; its rows (one per VM, with the set-up fields), series, wall time.

    Runs in a worker process: everything returned is plain data.
    """
    from emu.baselines import make_policy

    t0 = time.perf_counter()
    params = Params().with_profile(cell.profile)
    host_fast = host_slow = None
    if cell.scenario:
        from emu.multitenant import SCENARIOS, HostShareProbe, make_scenario_policy

        scenario = SCENARIOS[cell.scenario]
        probe = HostShareProbe(make_scenario_policy(cell.policy, scenario))
        policy: Policy = probe
        # all-fast is the limit: its host has DRAM for every VM's memory
        if cell.policy != "all-fast":
            host_fast = scenario.host_fast_bytes(cell.npages, params.block_bytes)
        host_slow = scenario.host_slow_bytes(cell.npages, params.block_bytes)
    else:
        policy = make_policy(cell.policy)
    result = run_scenario(
        specs_of(cell),
        policy,
        epoch_s=cell.epoch_s,
        max_s=cell.max_s,
        params=params,
        seed=cell.seed,
        host_fast_bytes=host_fast,
        host_slow_bytes=host_slow,
    )
    extra = {"scenario": cell.scenario} if cell.scenario else {}
    rows = [
        {
            **row,
            "profile": cell.profile,
            "ratio": f"1:{cell.ratio}",
            "vms": cell.vms,
            "seed": cell.seed,
            **extra,
        }
        for row in result.rows
    ]
    series = {
        vm: {k: [round(float(x), 5) for x in v] for k, v in s.items()}
        for vm, s in result.series.items()
    }
    out: dict[str, object] = {
        "cell": asdict(cell),
        "rows": rows,
        "series": series,
        "wall_s": time.perf_counter() - t0,
        "virtual_s": result.virtual_s,
    }
    if cell.scenario:
        from emu.multitenant import guest_channel_status

        out["guest_channels"] = guest_channel_status(policy)
        out["host_shares"] = probe.series
    return out


Progress = Callable[[int, int, Cell, dict[str, object]], None]


def run_matrix(
    cells: Sequence[Cell], jobs: int = 2, progress: Progress | None = None
) -> list[dict[str, object]]:
    """Run ``cells`` in ``jobs`` processes (in-process if 1); results in cell order."""
    results: list[dict[str, object] | None] = [None] * len(cells)
    if jobs <= 1:
        for i, cell in enumerate(cells):
            results[i] = run_cell(cell)
            if progress is not None:
                progress(i + 1, len(cells), cell, results[i] or {})
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_cell, c): i for i, c in enumerate(cells)}
            for done, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                results[i] = fut.result()
                if progress is not None:
                    progress(done, len(cells), cells[i], results[i] or {})
    return [r for r in results if r is not None]


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


_SHORT = {
    "elapsed_s": "elapsed_s",
    "fast_hit_ratio": "fast_hit",
    "oracle_hit": "oracle",
    "hit_vs_oracle": "hit/oracle",
    "hit_ss": "hit_ss",
    "t90_s": "t90_s",
    "tlb_flush": "tlb_flush",
    "remote_tlb_flush": "remote_tlb",
    "tlb_local_flush_one": "local_one",
    "tlb_local_flush_all": "local_all",
    "tlb_remote_flush": "guest_remote",
    "pages_moved": "moved",
    "mgmt_cpu_s": "mgmt_cpu_s",
}


def format_cells(cells: Sequence[dict[str, object]], policies: Iterable[str]) -> str:
    """A fixed-width table of :func:`summarize` rows, a speedup column per policy."""
    speed = [f"speedup_vs_{p}" for p in policies]
    fields = [*CELL_KEYS, "policy", *_SHORT, *speed]
    heads = [_SHORT.get(f, f.replace("speedup_vs_", "x_")) for f in fields]

    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    body = [[fmt(c.get(f)) for f in fields] for c in cells]
    return text_table(heads, body, nleft=len(CELL_KEYS) + 1)


def _write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------- CLI
def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _ratio(text: str) -> int:
    fast, sep, slow = text.partition(":")
    if not sep or fast.strip() != "1" or not slow.strip().isdigit():
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not of the form 1:K")
    return int(slow)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` subcommand's flags; each overrides the preset's value."""
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="default", help="base matrix"
    )
    parser.add_argument("--out", type=Path, default=Path("hypertier-compare"))
    parser.add_argument("--workloads", type=_names, help="comma-separated workloads")
    parser.add_argument(
        "--scenarios",
        type=_names,
        help="comma-separated VM sets of a scenario preset (multi-tenant: "
        "tenants,gups)",
    )
    parser.add_argument(
        "--policies",
        type=_names,
        help=f"comma-separated, from {','.join(POLICY_NAMES)}",
    )
    parser.add_argument("--profiles", type=_names, help="memory profiles: cxl,pmem")
    parser.add_argument(
        "--ratios",
        type=lambda s: tuple(_ratio(x) for x in _names(s)),
        help="fast:slow ratios, e.g. 1:2,1:5",
    )
    parser.add_argument(
        "--vms",
        type=lambda s: tuple(int(x) for x in _names(s)),
        help="VM counts, e.g. 1,4,9",
    )
    parser.add_argument("--pages", type=int, help="footprint per VM (4 KiB pages)")
    parser.add_argument("--accesses", type=int, help="LLC misses per VM")
    parser.add_argument("--epoch-s", type=float, help="policy epoch (virtual s)")
    parser.add_argument("--max-s", type=float, help="virtual time limit per run")
    parser.add_argument("--seed", type=int, help="random seed of every cell")
    parser.add_argument(
        "--jobs", type=int, default=2, help="worker processes (default: %(default)s)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the per-cell rows as JSON"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _matrix(args: argparse.Namespace) -> Matrix:
    m = PRESETS[args.preset]
    over = {
        "workloads": args.workloads,
        "policies": args.policies,
        "profiles": args.profiles,
        "ratios": args.ratios,
        "vms": args.vms,
        "npages": args.pages,
        "accesses": args.accesses,
        "epoch_s": args.epoch_s,
        "max_s": args.max_s,
        "seed": args.seed,
        "scenarios": args.scenarios,
    }
    return replace(m, **{k: v for k, v in over.items() if v is not None})


def _check(m: Matrix, args: argparse.Namespace) -> str | None:
    from emu.multitenant import SCENARIOS, VARIANT_POLICIES
    from emu.workloads import WORKLOADS

    if m.scenarios or args.scenarios:
        if not PRESETS[args.preset].scenarios:
            return f"--scenarios needs a scenario preset, not {args.preset!r}"
        fixed = [f for f in ("workloads", "ratios", "vms") if getattr(args, f)]
        if fixed:
            return f"--{', --'.join(fixed)}: preset {args.preset!r} has fixed VM sets"
        for what, given, choices in (
            ("scenario", m.scenarios, tuple(SCENARIOS)),
            ("policy", m.policies, (*POLICY_NAMES, *VARIANT_POLICIES)),
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
    return None


def main(args: argparse.Namespace) -> int:
    """Run the matrix, print the table, write report.json/.csv and plots."""
    from emu.baselines import PolicyUnavailable, make_policy

    matrix = _matrix(args)
    problem = _check(matrix, args)
    if problem is not None or args.jobs < 1:
        print(f"hypertier compare: {problem or '--jobs must be >= 1'}", file=sys.stderr)
        return 2
    unavailable: dict[str, str] = {}
    for name in matrix.policies:
        try:
            if matrix.scenarios:
                from emu.multitenant import SCENARIOS, make_scenario_policy

                make_scenario_policy(name, SCENARIOS["tenants"]).close()
            else:
                make_policy(name).close()
        except PolicyUnavailable as err:
            unavailable[name] = err.reason
            print(
                f"hypertier compare: WARNING: {err}; the {name!r} column is left out "
                "of every table, file and plot",
                file=sys.stderr,
            )
    policies = tuple(p for p in matrix.policies if p not in unavailable)
    if not policies:
        print("hypertier compare: no policy left to run", file=sys.stderr)
        return 1
    matrix = replace(matrix, policies=policies)
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
    rows = add_speedups([row for r in results for row in r["rows"]])  # type: ignore[attr-defined]
    tenants: dict[str, object] = {}
    if matrix.scenarios:
        from emu.multitenant import report

        table, text, tenants = report(matrix, results)
    else:
        table = summarize(rows)
        text = format_cells(table, policies)
    meta = {
        "preset": args.preset,
        "matrix": asdict(matrix),
        "capacity_over_footprint": CAPACITY_OVER_FOOTPRINT,
        "jobs": args.jobs,
        "wall_s": round(wall, 2),
        "unavailable": unavailable,
        "row_fields": list(ROW_FIELDS),
    }
    doc = {
        "meta": meta,
        "rows": rows,
        "cells": table,
        **({"tenants": tenants} if matrix.scenarios else {}),
        "series": [
            {"cell": r["cell"], "wall_s": round(float(str(r["wall_s"])), 3),
             "virtual_s": r["virtual_s"], "series": r["series"],
             **{k: r[k] for k in ("guest_channels", "host_shares") if k in r}}
            for r in results
        ],
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    _write_csv(out / "report.csv", rows)
    (out / "table.txt").write_text(text + "\n")
    print(json.dumps(table, indent=1) if args.json else text)
    if not args.no_plots:
        try:
            if matrix.scenarios:
                from emu.multitenant import write_plots as write_tenant_plots

                paths = write_tenant_plots(out, matrix, results)
            else:
                from emu.plots import write_plots

                paths = write_plots(out, table, results)
            print(f"hypertier compare: {len(paths)} plots in {out}", file=sys.stderr)
        except ImportError as err:
            print(f"hypertier compare: no plots: {err}", file=sys.stderr)
    print(
        f"hypertier compare: wrote {out / 'report.json'}, report.csv, table.txt "
        f"in {wall:.1f} s",
        file=sys.stderr,
    )
    return 0
