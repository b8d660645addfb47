"""Show the host's memory tiers: which NUMA nodes are fast, which slow.

The same discovery the daemon and ``vm define`` use: nodes with CPUs are fast,
CPU-less nodes with memory (CXL.mem, PMEM as system RAM) are slow, and
``host.fast_nodes``/``host.slow_nodes`` override. Without a slow node the slow
tier can only be emulated on fast memory (``host.emulate_slow_tier``, for tests);
otherwise this is a configuration error (exit 2) that says what to set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from agent_host.backend import Tier
from agent_host.cmd_common import DEFAULT_CONFIG, load_config
from agent_host.config import Config
from agent_host.linux_nodes import read_host_nodes
from hypertier_common.cli import add_config_flag, config_path
from hypertier_common.cpulist import parse_cpulist
from hypertier_common.errors import ConfigError

HELP = "show the host's memory tiers: which NUMA nodes are fast, which slow"
EPILOG = """examples:
  hypertier-host tiers
  hypertier-host tiers --json
  hypertier-host tiers --slow-nodes 2,3 --no-emulate-slow-tier --json
"""


def _nodes(text: str) -> tuple[int, ...]:
    try:
        return parse_cpulist(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected node numbers such as 1,2 or 2-3, got {text!r}"
        ) from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser, DEFAULT_CONFIG)
    parser.add_argument(
        "--sysfs-root", type=Path, help="read sysfs under this root (host.sysfs_root)"
    )
    parser.add_argument(
        "--fast-nodes", type=_nodes, help="override host.fast_nodes (e.g. 0,1)"
    )
    parser.add_argument(
        "--slow-nodes", type=_nodes, help="override host.slow_nodes (e.g. 2,3)"
    )
    parser.add_argument(
        "--emulate-slow-tier",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept a host without a slow node (override host.emulate_slow_tier)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def tiers(cfg: Config) -> dict[str, Any]:
    """The host's nodes by tier, as ``tiers --json`` prints them.

    Raises:
        BackendError: sysfs cannot be read.
        ConfigError: no fast node, or no slow node and no emulation.
    """
    nodes = read_host_nodes(
        Path(cfg.host.sysfs_root), cfg.host.fast_nodes, cfg.host.slow_nodes
    )
    fast = [n.node for n in nodes if n.tier is Tier.FAST]
    slow = [n.node for n in nodes if n.tier is Tier.SLOW]
    if not fast:
        raise ConfigError("no fast-tier host node found; set host.fast_nodes")
    if not slow and not cfg.host.emulate_slow_tier:
        raise ConfigError(
            f"no slow memory tier: NUMA nodes {fast} all have CPUs; set "
            "host.slow_nodes, or host.emulate_slow_tier = true to emulate the slow "
            "tier on fast memory (for testing only)"
        )
    return {
        "fast_nodes": fast,
        "slow_nodes": slow or fast,
        "slow_tier_emulated": not slow,
        "nodes": [
            {
                "node": n.node,
                "tier": n.tier.value,
                "has_cpus": n.has_cpus,
                "total_bytes": n.total_bytes,
                "free_bytes": n.free_bytes,
            }
            for n in nodes
        ],
    }


def _with_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    host = cfg.host
    if args.sysfs_root is not None:
        host = dataclasses.replace(host, sysfs_root=str(args.sysfs_root))
    if args.fast_nodes is not None:
        host = dataclasses.replace(host, fast_nodes=args.fast_nodes)
    if args.slow_nodes is not None:
        host = dataclasses.replace(host, slow_nodes=args.slow_nodes)
    if args.emulate_slow_tier is not None:
        host = dataclasses.replace(host, emulate_slow_tier=args.emulate_slow_tier)
    return dataclasses.replace(cfg, host=host)


def main(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args, DEFAULT_CONFIG))
    found = tiers(_with_overrides(cfg, args))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    emulated = " (emulated on the fast nodes)" if found["slow_tier_emulated"] else ""
    print(f"fast tier: nodes {found['fast_nodes']}")
    print(f"slow tier: nodes {found['slow_nodes']}{emulated}")
    for n in found["nodes"]:
        cpus = "CPUs" if n["has_cpus"] else "no CPUs"
        print(
            f"  node {n['node']}: {n['tier']}, {cpus}, "
            f"{n['total_bytes'] >> 20} MiB ({n['free_bytes'] >> 20} MiB free)"
        )
    return 0
