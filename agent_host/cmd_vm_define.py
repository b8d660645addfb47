"""Write the domain XML of a tiered VM (or convert an existing domain) and define it.

libvirt is needed (and imported) only with ``--convert`` or ``--define``.

Host tier nodes come from sysfs (``host.fast_nodes``/``host.slow_nodes`` override):
CPU-less nodes are the slow tier; without one the slow tier is emulated on the
fast nodes, and the command says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent_host import domxml
from agent_host.cmd_common import DEFAULT_CONFIG, load_config, mib
from agent_host.cmd_tiers import tiers
from agent_host.config import Config
from agent_host.vmspec import CHANNEL_NAME, TieredVmSpec
from hypertier_common.cli import add_config_flag, config_path
from hypertier_common.errors import ConfigError

HELP = "write the domain XML of a tiered VM (or convert a domain) and define it"
EPILOG = """examples:
  hypertier-host vm define web1 --fast-mib 2048 --slow-mib 4096 \\
      --disk /var/lib/libvirt/images/web1.qcow2 -o web1.xml
  hypertier-host vm define web1 --convert --class gold --define
"""

log = logging.getLogger(__name__)
MiB = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser, DEFAULT_CONFIG)
    parser.add_argument("vm", help="domain name")
    parser.add_argument("--vcpus", type=int, default=2, help="vCPUs (default 2)")
    parser.add_argument(
        "--fast-mib", type=mib, default=1024, help="fast tier reservation (MiB)"
    )
    parser.add_argument(
        "--slow-mib", type=mib, default=1024, help="slow tier reservation (MiB)"
    )
    parser.add_argument(
        "--fast-max-mib", type=mib, help="fast tier limit (MiB; default 4x reservation)"
    )
    parser.add_argument(
        "--slow-max-mib", type=mib, help="slow tier limit (MiB; default 4x reservation)"
    )
    parser.add_argument("--disk", default="", help="disk image (new domains)")
    parser.add_argument("--class", dest="qos_class", default=None, help="QoS class")
    parser.add_argument(
        "--domain-type",
        choices=("kvm", "qemu"),
        default="kvm",
        help="kvm (hardware) or qemu (TCG emulation)",
    )
    parser.add_argument(
        "--convert",
        action="store_true",
        help="convert the existing libvirt domain VM instead of writing a new one",
    )
    parser.add_argument(
        "--define", action="store_true", help="define the domain in libvirt"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="write the XML here (default stdout)"
    )


def _tier_nodes(cfg: Config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    found = tiers(cfg)  # the slow nodes are the fast ones when emulated
    return tuple(found["fast_nodes"]), tuple(found["slow_nodes"])


def main(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args, DEFAULT_CONFIG))
    fast_nodes, slow_nodes = _tier_nodes(cfg)
    qos = args.qos_class or cfg.policy.default_class
    if qos not in cfg.classes:
        raise ConfigError(f"class {qos!r} unknown; choose from {sorted(cfg.classes)}")
    if not args.convert and not args.disk:
        raise ConfigError("--disk is needed for a new domain (or use --convert)")
    spec = TieredVmSpec(
        name=args.vm,
        vcpus=args.vcpus,
        fast_bytes=args.fast_mib * MiB,
        slow_bytes=args.slow_mib * MiB,
        fast_max_bytes=(args.fast_max_mib or 4 * args.fast_mib) * MiB,
        slow_max_bytes=(args.slow_max_mib or 4 * args.slow_mib) * MiB,
        host_fast_nodes=fast_nodes,
        host_slow_nodes=slow_nodes,
        disk_path=args.disk,
        channel_path=f"{cfg.host.channel_dir}/{args.vm}.{CHANNEL_NAME}",
        qos_class=qos,
        domain_type=args.domain_type,
    )
    backend = None
    if args.convert or args.define:
        # Imported here: writing XML needs no libvirt (python3-libvirt).
        from agent_host.libvirt_backend import LibvirtHostBackend

        backend = LibvirtHostBackend(cfg.host.uri, root=Path(cfg.host.sysfs_root))
    try:
        if backend is not None and args.convert:
            result = domxml.convert_domain_xml(
                backend.domain_xml(args.vm, inactive=True), spec
            )
        else:
            result = domxml.new_domain_xml(spec)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        if args.output:
            args.output.write_text(result.xml)
        elif not args.define:
            print(result.xml, end="")
        if backend is not None and args.define:
            backend.define_xml(result.xml)
            print(f"defined {args.vm} on {cfg.host.uri}", file=sys.stderr)
    finally:
        if backend is not None:
            backend.close()
    return 0
