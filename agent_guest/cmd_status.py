"""``hypertier-guest status``: counters of the running daemon, over its socket."""

from __future__ import annotations

import argparse
import json

from agent_guest import config
from agent_guest.control import call

__all__ = ["EPILOG", "HELP", "add_arguments", "main", "socket_path"]

HELP = "show the running daemon's counters"
EPILOG = """examples:
  hypertier-guest status
  hypertier-guest status --json --socket /run/hypertier/guest.sock
"""


def add_socket_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=None, help="config file naming the control socket"
    )
    parser.add_argument(
        "--socket", default=None, help="control socket path (overrides the config)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_socket_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print raw JSON")


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    cfg = config.load(args.config) if args.config else config.Config()
    return cfg.guest.control_socket


def main(args: argparse.Namespace) -> int:
    result = call(socket_path(args), "status")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0
