"""``hypertier-guest stop``: ask the running daemon to shut down."""

from __future__ import annotations

import argparse

from agent_guest.cmd_status import add_socket_arguments, socket_path
from agent_guest.control import call

__all__ = ["EPILOG", "HELP", "add_arguments", "main"]

HELP = "stop the running daemon"
EPILOG = """examples:
  hypertier-guest stop
  hypertier-guest stop --socket /run/hypertier/guest.sock
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_socket_arguments(parser)


def main(args: argparse.Namespace) -> int:
    call(socket_path(args), "stop")
    print("stop requested")
    return 0
