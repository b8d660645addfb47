"""``hypertier-host``: the agent's command line on the shared skeleton.

hypertier_common.cli adds ``status``, ``reload``, ``stop`` and ``config
check|show``, the global flags, logging and the exit codes (0 ok, 1 runtime
failure, 2 usage or configuration error, 3 ``status`` with no daemon).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agent_host import cmd_run, cmd_tiers, cmd_vm_define, cmd_vm_set, config
from agent_host.errors import ERROR_KINDS
from agent_host.status import format_status
from hypertier_common import VERSION, cli

__all__ = ["AGENT", "build_parser", "main"]

COMMANDS = {
    ("run",): cmd_run,
    ("tiers",): cmd_tiers,
    ("vm", "define"): cmd_vm_define,
    ("vm", "set"): cmd_vm_set,
}
EXAMPLES = """examples:
  hypertier-host run -c /etc/hypertier/host.toml
  hypertier-host status
  hypertier-host status --json
  hypertier-host tiers --json
  hypertier-host vm define web1 --vcpus 4 --fast-mib 4096 --slow-mib 8192 \\
      --disk /var/lib/libvirt/images/web1.qcow2 --class gold --define
  hypertier-host vm set web1 --class silver --fast-reservation-mib 2048
  hypertier-host config check /etc/hypertier/host.toml
"""

AGENT = cli.Agent(
    "hypertier-host",
    VERSION,
    config,
    ERROR_KINDS,
    format_status,
    COMMANDS,
    description="HyperTier host agent: per-tier VM memory provisioning.",
    examples=EXAMPLES,
    groups={"vm": "define tiered VMs and change their settings"},
)


def build_parser() -> argparse.ArgumentParser:
    """The whole argparse tree (also what the completion and man page are made of)."""
    return cli.build_parser(AGENT)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, map errors to exit codes."""
    return cli.main(AGENT, argv)
