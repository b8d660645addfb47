"""``hypertier-guest``: the argparse tree, logging setup, signals and exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType, ModuleType

from agent_guest import cmd_config, cmd_reload, cmd_run, cmd_status, cmd_stop
from agent_guest.daemon import VERSION
from agent_guest.errors import ConfigError, GuestError
from hypertier_common.systemd import stderr_handler

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

SUBCOMMANDS: dict[str, ModuleType] = {
    "run": cmd_run,
    "status": cmd_status,
    "reload": cmd_reload,
    "stop": cmd_stop,
    "config": cmd_config,
}

EPILOG = """examples:
  hypertier-guest run -c /etc/hypertier/guest.toml
  hypertier-guest status --json
  hypertier-guest config check /etc/hypertier/guest.toml
  hypertier-guest config show -c /etc/hypertier/guest.toml
"""


class _JsonFormatter(logging.Formatter):
    """One JSON object per record (journald keeps the line whole)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as exit code 2 without exiting itself."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hypertier-guest",
        description="HyperTier guest agent: access sampling and NUMA page placement.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="debug logging (default: info)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="stderr log format (json: one object per line)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in SUBCOMMANDS.items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
    return parser


def _setup_logging(verbose: int, fmt: str) -> None:
    formatter = (
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    handler = stderr_handler(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING - 10 * min(verbose + 1, 2))


def _install_signals(args: argparse.Namespace) -> None:
    """TERM/INT set the stop event, HUP the reload event; nothing else."""
    stop, reload = threading.Event(), threading.Event()
    args.stop_event, args.reload_event = stop, reload
    if threading.current_thread() is not threading.main_thread():
        return

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def _reload(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    _setup_logging(args.verbose, args.log_format)
    if args.command == "run":
        _install_signals(args)
    try:
        code: int = SUBCOMMANDS[args.command].main(args)
        return code
    except ConfigError as err:
        print(f"hypertier-guest: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except GuestError as err:
        log.error("%s", err)
        return EXIT_FAILURE
    except Exception:
        log.exception("unexpected error")
        return EXIT_FAILURE
