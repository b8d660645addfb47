"""``hypertier-guest config check FILE | config show [-c FILE]``."""

from __future__ import annotations

import argparse
import sys

from agent_guest import config

__all__ = ["EPILOG", "HELP", "add_arguments", "main"]

HELP = "validate a config file or print the effective configuration"
EPILOG = """examples:
  hypertier-guest config check /etc/hypertier/guest.toml
  hypertier-guest config show                  # defaults only
  hypertier-guest config show -c /etc/hypertier/guest.toml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser(
        "check",
        help="validate FILE; exit 2 naming the bad key",
        epilog="examples:\n  hypertier-guest config check /etc/hypertier/guest.toml\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", help="TOML config file")
    show = sub.add_parser(
        "show",
        help="print the effective config as TOML",
        epilog="examples:\n  hypertier-guest config show -c /etc/hypertier/guest.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument(
        "-c", "--config", default=None, help="config file (default: built-in defaults)"
    )


def main(args: argparse.Namespace) -> int:
    if args.action == "check":
        config.load(args.file)
        print(f"{args.file}: ok")
        return 0
    cfg = config.load(args.config) if args.config else config.Config()
    sys.stdout.write(config.dumps(cfg))
    return 0
