"""Flags and helpers shared by several subcommands (config loading, the client)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent_host import config
from agent_host.control import ControlClient

__all__ = ["DEFAULT_CONFIG", "add_config_flag", "client", "load_config", "mib"]

DEFAULT_CONFIG = Path("/etc/hypertier/host.toml")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help=f"TOML configuration (default {DEFAULT_CONFIG} if it exists)",
    )


def mib(text: str) -> int:
    """An argparse type: a whole, non-negative number of MiB ("24", not "24.0").

    Sizes end up as integer byte counts in the domain XML and metadata.
    """
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(
            f"expected a whole number of MiB (e.g. 24), got {text!r}"
        )
    return int(text)


def load_config(args: argparse.Namespace) -> config.Config:
    """The configuration named by ``--config``, the default file, or defaults."""
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    return config.load(path) if path is not None else config.Config()


def client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(load_config(args).host.control_socket)
