"""``hypertier-host``: the argparse tree, logging setup and exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from types import ModuleType

from agent_host import (
    cmd_config_check,
    cmd_config_show,
    cmd_reload,
    cmd_run,
    cmd_status,
    cmd_stop,
    cmd_tiers,
    cmd_vm_define,
    cmd_vm_set,
)
from agent_host.daemon import VERSION
from agent_host.errors import AccessDenied, ConfigError, HostError
from hypertier_common.systemd import stderr_handler

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "SUBCOMMANDS", "main"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# (group, command) -> module with add_arguments(parser) and main(args) -> int.
SUBCOMMANDS: dict[tuple[str, ...], ModuleType] = {
    ("run",): cmd_run,
    ("status",): cmd_status,
    ("reload",): cmd_reload,
    ("stop",): cmd_stop,
    ("tiers",): cmd_tiers,
    ("vm", "define"): cmd_vm_define,
    ("vm", "set"): cmd_vm_set,
    ("config", "check"): cmd_config_check,
    ("config", "show"): cmd_config_show,
}

EPILOG = """examples:
  hypertier-host run -c /etc/hypertier/host.toml
  hypertier-host status --json
  hypertier-host tiers --json
  hypertier-host vm define web1 --vcpus 4 --fast-mib 4096 --slow-mib 8192 \\
      --disk /var/lib/libvirt/images/web1.qcow2 --class gold --define
  hypertier-host vm set web1 --class silver --fast-reservation-mib 2048
  hypertier-host config check /etc/hypertier/host.toml
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypertier-host",
        description="HyperTier host agent: per-tier VM memory provisioning.",
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
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for path, module in SUBCOMMANDS.items():
        doc = (module.__doc__ or "").strip().splitlines()[0]
        if len(path) == 1:
            sub = top.add_parser(
                path[0],
                help=doc,
                description=doc,
                epilog=module.EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        else:
            if path[0] not in groups:
                grp = top.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = grp.add_subparsers(
                    dest="subcommand", required=True, metavar="SUBCOMMAND"
                )
            sub = groups[path[0]].add_parser(
                path[1],
                help=doc,
                description=doc,
                epilog=module.EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, map errors to exit codes."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    signals = getattr(args, "signals", None)
    if signals is not None and threading.current_thread() is threading.main_thread():
        # Handlers only set events; the daemon's signal thread acts on them.
        signal.signal(signal.SIGTERM, lambda *_: signals.request_stop())
        signal.signal(signal.SIGINT, lambda *_: signals.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: signals.request_reload())
    # INFO by default: VMs added and removed, tiers resized reach the journal.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        handlers=[
            stderr_handler(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        ],
    )
    try:
        rc: int = args.handler(args)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_USAGE
    except AccessDenied as err:
        log.error("%s", err)
        return EXIT_FAILURE
    except HostError as err:
        log.error("%s", err)
        return EXIT_FAILURE
    except Exception:
        log.exception("unexpected error (a bug; please report it)")
        return EXIT_FAILURE
    return rc
