"""Run the embedded default evaluation (or a chosen policy set) on the emulator."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from emu.evaluation.cmd_compare import trace_layout
from emu.evaluation.compare import PRESETS
from emu.evaluation.plots import write_plots
from emu.evaluation.report import format_table, report_doc, run_entry, write_json
from emu.evaluation.runner import RunResult, default_scenario, run_scenario
from emu.machine import PAGE_SIZE
from emu.machine.params import PROFILES, Params
from emu.policies import VmSpec
from emu.workloads import TRACE_PREFIX, make_workload

__all__ = ["add_arguments", "main"]

DEFAULT_POLICIES = "none,all-fast,hypertier"
# LLC misses of a --workload run at scale 1 (a trace: the default comparison's)
SYNTHETIC_ACCESSES = 60_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("hypertier-out"),
        help="output directory (default: %(default)s)",
    )
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated policy names (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="cxl",
        help="slow-tier memory profile (default: %(default)s)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="footprint and work scale factor (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch-s",
        type=float,
        default=0.05,
        help="policy epoch in virtual seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--workload",
        help="run one VM with this workload instead of the default four: a name "
        "or trace:FILE (a recorded trace, replayed in order)",
    )
    parser.add_argument(
        "--fast-fraction",
        type=float,
        default=0.25,
        help="with --workload: fast tier as a fraction of the footprint "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--accesses",
        type=int,
        help="with --workload: LLC misses to run (default x scale: 60 M; for a "
        "trace, as the default comparison runs it, 600 M, wrapping around: long "
        "enough to pay migrations back, where one pass of a trace may last "
        "tens of emulated ms)",
    )
    parser.add_argument(
        "--trace-layout",
        type=trace_layout,
        default="touch",
        help="with --workload trace:FILE: where its pages sit in the replayed "
        "mapping: touch (first-touch order) or address (recorded address order, "
        "holes left out) (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print report.json's rows to stdout instead of the table",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _one_vm(args: argparse.Namespace) -> VmSpec:
    """The VM of ``--workload``: fast = ``--fast-fraction`` of its footprint."""
    from emu.workloads.trace import TraceWorkload

    if not 0 < args.fast_fraction <= 1:
        raise ValueError("--fast-fraction must be in (0, 1]")
    wl = make_workload(args.workload, int(98_304 * args.scale), seed=args.seed)
    accesses = args.accesses
    if accesses is None:
        per_scale = SYNTHETIC_ACCESSES
        if isinstance(wl, TraceWorkload):
            preset = PRESETS["default"]
            per_scale = preset.trace_accesses or preset.accesses
        accesses = int(per_scale * args.scale)
    if accesses < 1:
        raise ValueError("--accesses must be >= 1")
    npages = wl.npages
    return VmSpec(
        "vm1",
        args.workload,
        npages,
        int(npages * PAGE_SIZE * args.fast_fraction),
        npages * PAGE_SIZE,
        2,
        accesses,
        seed=1,
        fast_max_bytes=2 * int(npages * PAGE_SIZE * args.fast_fraction),
        trace_layout=args.trace_layout,
    )


class _Progress:
    """One status line on stderr: \\r-updated on a terminal, sparse lines otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = -1.0

    def __call__(self, policy: str, t_s: float, frac: float) -> None:
        if self._tty:
            sys.stderr.write(f"\r  {policy:<10} t={t_s:6.2f}s  {frac:6.1%} done ")
            sys.stderr.flush()
        elif frac - self._last >= 0.25 or frac >= 1.0:
            sys.stderr.write(f"  {policy:<10} t={t_s:6.2f}s  {frac:6.1%} done\n")
            self._last = frac

    def end(self) -> None:
        if self._tty:
            sys.stderr.write("\n")
        self._last = -1.0


def main(args: argparse.Namespace) -> int:
    from emu.policies import make_policy

    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    try:
        policies = [make_policy(n) for n in names]
    except (ValueError, ImportError) as err:
        print(f"hypertier: {err}", file=sys.stderr)
        return 2
    if args.scale <= 0 or args.epoch_s <= 0:
        print("hypertier: --scale and --epoch-s must be > 0", file=sys.stderr)
        return 2
    if args.workload is None:
        specs = default_scenario(args.scale)
    else:
        try:
            specs = [_one_vm(args)]
        except ValueError as err:
            print(f"hypertier: {err}", file=sys.stderr)
            return 2
    params = Params().with_profile(args.profile)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"hypertier: {len(specs)} VMs ({', '.join(str(s.workload) for s in specs)}), "
        f"profile {args.profile}, policies {', '.join(names)}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    progress = _Progress()
    results: list[RunResult] = []
    for pol in policies:
        results.append(
            run_scenario(
                specs,
                pol,
                epoch_s=args.epoch_s,
                params=params,
                seed=args.seed,
                progress=progress,
            )
        )
        progress.end()
    wall = time.perf_counter() - t0
    meta = {
        "command": "run",
        "profile": args.profile,
        "scale": args.scale,
        "seed": args.seed,
        "epoch_s": args.epoch_s,
        "policies": names,
        "workload": args.workload,
        "fast_fraction": args.fast_fraction if args.workload else None,
        "trace_layout": (
            args.trace_layout
            if args.workload and args.workload.startswith(TRACE_PREFIX)
            else None
        ),
        "wall_s": round(wall, 3),
    }
    setup = {"profile": args.profile, "vms": len(specs), "seed": args.seed}
    ratio = {s.name: f"1:{round(s.slow_bytes / s.fast_bytes, 2):g}" for s in specs}
    rows = [
        {**row, **setup, "ratio": ratio[str(row["vm"])]}
        for r in results
        for row in r.rows
    ]
    cell = {**setup, "scale": args.scale, "epoch_s": args.epoch_s}
    runs = [
        run_entry(
            {"policy": r.policy, **cell}, r.wall_s, r.virtual_s, r.accesses, r.series
        )
        for r in results
    ]
    doc = report_doc(meta, rows, runs)
    write_json(out / "report.json", doc)
    if args.json:
        import json

        print(json.dumps(doc["rows"], indent=1))
    else:
        print(format_table([row for r in results for row in r.rows]))
    if not args.no_plots:
        try:
            for path in write_plots(out, doc):
                print(f"hypertier: wrote {path}", file=sys.stderr)
        except ImportError as err:
            print(f"hypertier: no plots: {err}", file=sys.stderr)
    print(f"hypertier: wrote {out / 'report.json'} in {wall:.1f} s", file=sys.stderr)
    return 0
