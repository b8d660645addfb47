"""Make the running daemon re-read its configuration file."""

from __future__ import annotations

import argparse

from agent_host.cmd_common import add_config_flag, client

EPILOG = """examples:
  hypertier-host reload
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)


def main(args: argparse.Namespace) -> int:
    client(args).call("reload")
    return 0
