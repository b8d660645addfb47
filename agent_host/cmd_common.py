"""Flags and helpers of the host's own subcommands (``run``, ``vm define|set``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent_host import config

__all__ = ["DEFAULT_CONFIG", "load_config", "mib"]

DEFAULT_CONFIG = config.DEFAULT_CONFIG


def mib(text: str) -> int:
    """An argparse type: a whole, non-negative number of MiB ("24", not "24.0").

    Sizes end up as integer byte counts in the domain XML and metadata.
    """
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(
            f"expected a whole number of MiB (e.g. 24), got {text!r}"
        )
    return int(text)


def load_config(path: Path | None) -> config.Config:
    """The configuration in ``path``, or the built-in defaults for None."""
    return config.load(path) if path is not None else config.Config()
