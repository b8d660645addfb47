"""``hypertier-guest``: the agent's command line on the shared skeleton.

hypertier_common.cli adds ``status``, ``reload``, ``stop`` and ``config
check|show``, the global flags, logging and the exit codes (0 ok, 1 runtime
failure, 2 usage or configuration error, 3 ``status`` with no daemon).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agent_guest import cmd_run, config
from agent_guest.errors import ERROR_KINDS
from agent_guest.status import format_status
from hypertier_common import VERSION, cli

__all__ = ["AGENT", "build_parser", "main"]

EXAMPLES = """examples:
  hypertier-guest run -c /etc/hypertier/guest.toml
  hypertier-guest status
  hypertier-guest status --json
  hypertier-guest config check /etc/hypertier/guest.toml
  hypertier-guest -v config show -c /etc/hypertier/guest.toml
"""

AGENT = cli.Agent(
    "hypertier-guest",
    VERSION,
    config,
    ERROR_KINDS,
    format_status,
    {("run",): cmd_run},
    description="HyperTier guest agent: access sampling and NUMA page placement.",
    examples=EXAMPLES,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole argparse tree (also what the completion and man page are made of)."""
    return cli.build_parser(AGENT)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, and return its exit code."""
    return cli.main(AGENT, argv)
