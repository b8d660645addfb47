"""Record a real program's LLC-miss trace (valgrind lackey), or describe a trace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emu.workloads.trace import load_trace

__all__ = ["EPILOG", "add_arguments", "main"]

EPILOG = """examples:
  hypertier trace record -o sort.npz -- sort /tmp/words.txt
  hypertier trace record --cache-mib 4 -o redis.npz --wait-port 7777 \\
      --client 'redis-benchmark -p 7777 -t set -n 20000 -r 50000 -d 256' \\
      --client 'redis-benchmark -p 7777 -t get -n 40000 -r 50000' \\
      -- redis-server --port 7777 --save '' --appendonly no
  hypertier trace info redis.npz
  hypertier run --workload trace:redis.npz --policies none,hypertier,oracle
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trace_command", required=True)
    rec = sub.add_parser(
        "record",
        help="run a command under valgrind's lackey and write its LLC-miss trace",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument(
        "--cache-mib",
        type=float,
        default=8.0,
        help="LLC filter size in MiB (default: %(default)s)",
    )
    rec.add_argument(
        "--ways", type=int, default=16, help="LLC associativity (default: %(default)s)"
    )
    rec.add_argument(
        "-o", "--output", type=Path, default=Path("trace.npz"), help="trace file"
    )
    rec.add_argument(
        "--client",
        action="append",
        default=[],
        help="shell command run once the program is up; repeatable, each starts "
        "a phase; after the last the program gets SIGTERM",
    )
    rec.add_argument(
        "--wait-port",
        type=int,
        help="start the clients once 127.0.0.1:PORT accepts connections",
    )
    rec.add_argument(
        "--wait-s",
        type=float,
        default=120.0,
        help="how long to wait for --wait-port (default: %(default)s)",
    )
    rec.add_argument(
        "--phase-on-open",
        metavar="PATH",
        help="a phase starts each time the program opens PATH (e.g. sqlite3's "
        "'.read PATH')",
    )
    rec.add_argument(
        "--max-accesses", type=int, help="stop the program after this many accesses"
    )
    rec.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="-- CMD ARGS...: the trace is CMD's own process (children it starts "
        "run untraced; a CMD that execs another program, as taskset or env do, is "
        "refused: record that program, wrappers go before hypertier)",
    )
    rec.set_defaults(trace_func=_record)
    info = sub.add_parser(
        "info",
        help="print a trace's metadata and sizes",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("file", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(trace_func=_info)


def _summary(path: Path) -> dict[str, object]:
    tr = load_trace(path)
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "pages": tr.npages,
        "footprint_mib": round(tr.npages * 4096 / (1 << 20), 2),
        "accesses": len(tr.accesses),
        "writes": int(tr.writes.sum()) if tr.writes is not None else None,
        "phases": [e - s for s, e in tr.segments],
        **tr.meta,
    }


def _info(args: argparse.Namespace) -> int:
    try:
        doc = _summary(args.file)
    except (OSError, ValueError) as err:
        print(f"hypertier trace info: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for k, v in doc.items():
            print(f"{k:<20} {v}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from emu.workloads.record import RecordError, record

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("hypertier trace record: no command given (-- CMD ...)", file=sys.stderr)
        return 2
    if args.cache_mib <= 0 or args.ways < 1 or args.wait_s <= 0:
        print(
            "hypertier trace record: --cache-mib, --ways and --wait-s must be > 0",
            file=sys.stderr,
        )
        return 2
    try:
        trace = record(
            command,
            cache_bytes=int(args.cache_mib * (1 << 20)),
            ways=args.ways,
            clients=args.client,
            wait_port=args.wait_port,
            wait_s=args.wait_s,
            max_accesses=args.max_accesses,
            marker_path=args.phase_on_open,
        )
    except RecordError as err:
        print(f"hypertier trace record: {err}", file=sys.stderr)
        return 1
    trace.save(args.output)
    s = _summary(args.output)
    print(
        f"hypertier trace record: wrote {args.output} ({s['file_bytes']} bytes): "
        f"{s['accesses']} misses of {s['raw_accesses']} accesses, {s['pages']} "
        f"pages ({s['footprint_mib']} MiB), phases {s['phases']}",
        file=sys.stderr,
    )
    return 0


def main(args: argparse.Namespace) -> int:
    """Dispatch ``trace record`` / ``trace info``."""
    func = args.trace_func
    rc: int = func(args)
    return rc
