"""``hypertier``: the evaluation front end on the emulator.

With no arguments it runs the embedded default evaluation (four VMs, mixed
workloads, HyperTier against no management and all-fast memory), prints the
table and writes report.json and PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

log = logging.getLogger(__name__)

EPILOG_RUN = """examples:
  hypertier                          # the default evaluation into hypertier-out/
  hypertier run --out /tmp/ev --policies none,hypertier --scale 0.5
  hypertier run --profile pmem --seed 7 --json
  hypertier run --workload trace:redis-set-get \\
      --fast-fraction 0.125 \\
      --policies none,hypertier,oracle
  hypertier trace record -o sort.npz -- sort /tmp/words.txt
"""

# subcommand name -> module with add_arguments(parser) and main(args) -> int
SUBCOMMANDS = {
    "run": "emu.evaluation.cmd_run",
    "compare": "emu.evaluation.cmd_compare",
    "trace": "emu.evaluation.cmd_trace",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypertier",
        description="HyperTier evaluation on the emulator (default command: run).",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command")
    for name in SUBCOMMANDS:
        mod = importlib.import_module(SUBCOMMANDS[name])
        p = sub.add_parser(
            name,
            help=(mod.__doc__ or "").strip().splitlines()[0],
            epilog=getattr(mod, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    if not args_list or (
        args_list[0].startswith("-")
        and args_list[0] not in ("-h", "--help")
        and first not in SUBCOMMANDS  # "hypertier -v trace ..." keeps its command
    ):
        args_list.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("hypertier failed")
        return 1
