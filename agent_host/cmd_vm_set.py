"""Change a running VM's QoS class, per-tier reservations or limits."""

from __future__ import annotations

import argparse
import json

from agent_host.cmd_common import DEFAULT_CONFIG, mib
from hypertier_common.cli import add_socket_flags, client

HELP = "change a running VM's QoS class, reservations or limits"
EPILOG = """examples:
  hypertier-host vm set web1 --class gold
  hypertier-host vm set web1 --fast-reservation-mib 2048 --fast-limit-mib 8192
"""

MiB = 1 << 20
_SIZES = ("fast_reservation", "slow_reservation", "fast_limit", "slow_limit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_socket_flags(parser, DEFAULT_CONFIG)
    parser.add_argument("vm", help="domain name")
    parser.add_argument("--class", dest="qos_class", help="QoS class name")
    for key in _SIZES:
        parser.add_argument(
            f"--{key.replace('_', '-')}-mib",
            dest=key,
            type=mib,
            metavar="MIB",
            help=f"{key.replace('_', ' ')} in MiB",
        )


def main(args: argparse.Namespace) -> int:
    params: dict[str, object] = {"vm": args.vm}
    if args.qos_class is not None:
        params["qos_class"] = args.qos_class
    for key in _SIZES:
        value = getattr(args, key)
        if value is not None:
            params[f"{key}_bytes"] = value * MiB
    result = client(args.agent, args).call("vm_set", **params)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
