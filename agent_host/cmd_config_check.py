"""Validate a configuration file (exit 2 naming the bad key)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent_host import config

EPILOG = """examples:
  hypertier-host config check /etc/hypertier/host.toml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="TOML file to validate")


def main(args: argparse.Namespace) -> int:
    config.load(args.file)
    print(f"{args.file}: ok")
    return 0
