"""Stop the running daemon (tier sizes stay as they are)."""

from __future__ import annotations

import argparse

from agent_host.cmd_common import add_config_flag, client

EPILOG = """examples:
  hypertier-host stop
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)


def main(args: argparse.Namespace) -> int:
    client(args).call("stop")
    return 0
