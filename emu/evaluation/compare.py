"""``hypertier compare``: run a matrix of workloads x policies x memory setups.

Each cell (workload, policy, memory profile, fast:slow ratio, VM count) runs
:func:`emu.evaluation.runner.run_scenario` in a worker process, deterministic under its
seed. The results are one row per VM (report.json, report.csv), a table per
cell with speedups over every other policy of the same set-up, and PNG plots.
A preset may instead name scenarios (explicit VM sets, :mod:`emu.evaluation.tenants`):
its cells are scenario x profile x policy and its table is per VM.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from emu.evaluation.report import (
    CELL_KEYS,
    MEAN_FIELDS,
    SHORT_NAMES,
    SUM_FIELDS,
    text_table,
)
from emu.evaluation.runner import run_scenario
from emu.machine import PAGE_SIZE
from emu.machine.params import Params
from emu.policies import POLICY_NAMES, Policy, VmSpec
from emu.policies.base import TENANT_POLICY_NAMES
from emu.workloads import TRACE_PREFIX, workload_pages
from emu.workloads.trace import shipped_traces

__all__ = [
    "PRESETS",
    "Cell",
    "Matrix",
    "cells_of",
    "format_cells",
    "run_cell",
    "run_matrix",
    "specs_of",
]

# LLC misses per VM of the multi-tenant preset: several emulated seconds.
MULTI_TENANT_ACCESSES = 80_000_000
# Memory per VM is the footprint plus this much free memory, split fast:slow.
CAPACITY_OVER_FOOTPRINT = 1.25


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
    # LLC misses per VM of trace workloads, if not ``accesses``: a trace's hot
    # pages are scattered (only per-page samples find them) and cheap to replay
    trace_accesses: int | None = None
    epoch_s: float = 0.01
    max_s: float = 30.0
    seed: int = 1
    # explicit VM sets (emu.evaluation.tenants.SCENARIOS); with any, the cells are
    # scenario x profile x policy and workloads, ratios and vms are unused
    scenarios: tuple[str, ...] = ()
    # where a trace's pages sit in the replayed mapping (emu.workloads.trace.LAYOUTS)
    trace_layout: str = "touch"


SYNTHETIC = ("gups", "kv-zipf", "btree", "bfs", "pagerank", "xsbench", "liblinear")

PRESETS: dict[str, Matrix] = {
    # Steady state: every synthetic workload and shipped trace, fast = 1/4 and 1/8
    # of the footprint, runs long enough to pay migrations back (docs/baselines.md:
    # ~5 emulated s, ~27 s for the traces), the oracle as the yardstick.
    "default": Matrix(
        workloads=(*SYNTHETIC, *(f"trace:{t}" for t in shipped_traces())),
        policies=(*POLICY_NAMES, "oracle"),
        profiles=("cxl",),
        ratios=(4, 9),
        vms=(1,),
        accesses=100_000_000,
        trace_accesses=600_000_000,
        max_s=120.0,
    ),
    # Breadth: both memory profiles, two splits, one and four VMs, short runs
    # (~0.3-0.5 emulated s: what each design does before it converges).
    "wide": Matrix(workloads=SYNTHETIC, policies=POLICY_NAMES),
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
        policies=TENANT_POLICY_NAMES,
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
    trace_layout: str = "touch"  # of a trace workload (emu.workloads.trace.LAYOUTS)

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
        from emu.evaluation.tenants import SCENARIOS

        return [
            Cell("", p, prof, SCENARIOS[sc].ratio(), len(SCENARIOS[sc].vms),
                 matrix.npages, matrix.accesses, matrix.epoch_s, matrix.max_s,
                 matrix.seed, scenario=sc)
            for sc in matrix.scenarios
            for prof in matrix.profiles
            for p in matrix.policies
            if p in SCENARIOS[sc].policies
        ]  # fmt: skip

    def accesses(w: str) -> int:
        if matrix.trace_accesses is not None and w.startswith(TRACE_PREFIX):
            return matrix.trace_accesses
        return matrix.accesses

    return [
        Cell(w, p, prof, r, n, matrix.npages, accesses(w), matrix.epoch_s,
             matrix.max_s, matrix.seed, trace_layout=matrix.trace_layout)
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
        from emu.evaluation.tenants import SCENARIOS

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
            trace_layout=cell.trace_layout,
        )
        for i in range(cell.vms)
    ]


def run_cell(cell: Cell) -> dict[str, object]:
    """Run one cell; its rows (one per VM, with the set-up fields), series, wall time.

    Runs in a worker process: everything returned is plain data.
    """
    from emu.policies import make_policy

    t0 = time.perf_counter()
    params = Params().with_profile(cell.profile)
    host_fast = host_slow = None
    if cell.scenario:
        from emu.evaluation.tenants import (
            SCENARIOS,
            HostShareProbe,
            make_scenario_policy,
        )

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
        "accesses": result.accesses,
    }
    if cell.scenario:
        from emu.evaluation.tenants import guest_channel_status

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


# The summary's columns, in order; headings as in every report (SHORT_NAMES).
_COLUMNS = ("elapsed_s", "fast_hit_ratio", *MEAN_FIELDS, *SUM_FIELDS)
_HEADS = {**SHORT_NAMES, "pages_moved": "moved"}


def format_cells(cells: Sequence[dict[str, object]], policies: Iterable[str]) -> str:
    """A fixed-width table of :func:`summarize` rows, a speedup column per policy."""
    speed = [f"speedup_vs_{p}" for p in policies]
    fields = [*CELL_KEYS, "policy", *_COLUMNS, *speed]
    heads = [_HEADS.get(f, f.replace("speedup_vs_", "x_")) for f in fields]

    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    body = [[fmt(c.get(f)) for f in fields] for c in cells]
    return text_table(heads, body, nleft=len(CELL_KEYS) + 1)


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
