"""``hypertier-guest reload``: ask the running daemon to re-read its config file."""

from __future__ import annotations

import argparse

from agent_guest.cmd_status import add_socket_arguments, socket_path
from agent_guest.control import call

__all__ = ["EPILOG", "HELP", "add_arguments", "main"]

HELP = "re-read the config file (keeps the old one if invalid)"
EPILOG = """examples:
  hypertier-guest reload
  hypertier-guest reload --socket /run/hypertier/guest.sock
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_socket_arguments(parser)


def main(args: argparse.Namespace) -> int:
    call(socket_path(args), "reload")
    print("reload requested")
    return 0
