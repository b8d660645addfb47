"""Command line of the peer benchmark: ``python -m tests.integration.peers --help``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from tests.integration.vm import cli

from . import build, report, runner
from .peers import PEERS

PROG = "python -m tests.integration.peers"
DESCRIPTION = "HyperTier beside real tiering peers on a Debian 13 guest."
EPILOG = """examples:
  python -m tests.integration.peers build            # image, memtierd, damo (cached)
  python -m tests.integration.peers run --out /tmp/p # every peer x every workload
  python -m tests.integration.peers run --short --out /tmp/p  # one workload (CI)
  python -m tests.integration.peers run --peer kernel --workload shift --out /tmp/p
  python -m tests.integration.peers table /tmp/p/report.json
"""


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("build", help="build (or reuse) the image, build root, memtierd")
    run = sub.add_parser("run", help="run the matrix; writes report.json, table, plots")
    run.add_argument("--out", type=Path, default=None, help="output directory")
    run.add_argument(
        "--short",
        action="store_true",
        help=f"only {runner.SHORT_WORKLOAD}, {runner.SHORT_DURATION_S:.0f} s a peer",
    )
    run.add_argument(
        "--peer", action="append", choices=sorted(PEERS), help="only these peers"
    )
    run.add_argument(
        "--workload",
        action="append",
        choices=sorted(runner.WORKLOADS),
        help="only these workloads",
    )
    run.add_argument("--duration-s", type=float, help="override every workload's")
    tab = sub.add_parser("table", help="print the table of a report.json")
    tab.add_argument("report", type=Path)
    merge = sub.add_parser(
        "merge",
        help="one report of several runs' cells (a later run's cell replaces an "
        "earlier one's); writes report.json, table and plots to --out",
    )
    merge.add_argument("--out", type=Path, required=True, help="output directory")
    merge.add_argument("reports", type=Path, nargs="+", help="report.json files")


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv, PROG, DESCRIPTION, EPILOG, _add_commands)
    if args.cmd == "table":
        data = json.loads(args.report.read_text())
        print(report.table(data), end="")
        return 0
    if args.cmd == "merge":
        args.out.mkdir(parents=True, exist_ok=True)
        data = finish(
            report.merge([json.loads(p.read_text()) for p in args.reports]), args.out
        )
        print(report.table(data), end="")
        print(f"report: {args.out / 'report.json'}")
        return 0
    missing = runner.missing_prerequisites()
    if missing:
        cli.print_missing(missing)
        return 2
    if args.cmd == "build":
        base = build.build_guest_image()
        builder = build.build_builder()
        print(base.root, "memtierd:", build.build_memtierd(builder))
        print("damo:", build.fetch_damo())
        return 0
    # SIGTERM unwinds like Ctrl-C, so the running cell destroys its VM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = runner.RunConfig(out=args.out or runner.default_out())
    if args.short:
        cfg.workloads = (runner.SHORT_WORKLOAD,)
        cfg.duration_s = runner.SHORT_DURATION_S
    if args.workload:
        cfg.workloads = tuple(args.workload)
    if args.peer:
        cfg.peers = tuple(args.peer)
    if args.duration_s:
        cfg.duration_s = args.duration_s
    data = finish(runner.Runner(cfg).run(), cfg.out)
    print(report.table(data), end="")
    print(f"report: {cfg.out / 'report.json'}")
    return 1 if data["errors"] else 0


def finish(data: dict[str, object], out: Path) -> dict[str, object]:
    """Derived figures, table.txt and the plots next to report.json."""
    report.add_derived(data)
    data["plots"] = [str(p) for p in report.plots(data, out)]
    (out / "table.txt").write_text(report.table(data))
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data


if __name__ == "__main__":
    raise SystemExit(main())
