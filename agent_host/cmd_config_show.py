"""Print the effective configuration (defaults included) as TOML."""

from __future__ import annotations

import argparse

from agent_host import config
from agent_host.cmd_common import add_config_flag, load_config

EPILOG = """examples:
  hypertier-host config show
  hypertier-host config show -c /etc/hypertier/host.toml > effective.toml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)


def main(args: argparse.Namespace) -> int:
    print(config.dumps(load_config(args)), end="")
    return 0
