"""Command line of the real-VM harness: ``python -m tests.integration.vm --help``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import image, libvirtd, scenario
from .machine import TestVm

EPILOG = """examples:
  python -m tests.integration.vm build-image          # build or reuse the cached image
  python -m tests.integration.vm run                  # the whole scenario, JSON report
  python -m tests.integration.vm run --keep           # leave the VM running afterwards
  python -m tests.integration.vm destroy              # remove a kept VM
  HYPERTIER_VM_ACCEL=tcg HYPERTIER_CACHE=/tmp/c python -m tests.integration.vm run
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.vm",
        description="Build, boot and exercise a tiered Debian 12 VM under libvirt.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build-image", help="build (or reuse) the cached base image")
    run = sub.add_parser("run", help="run the end-to-end scenario, write the report")
    run.add_argument("--keep", action="store_true", help="leave the VM running")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("destroy", help="destroy and undefine the test VM")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    missing = scenario.missing_prerequisites()
    if missing and args.cmd != "destroy":
        print("missing prerequisites:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    if args.cmd == "build-image":
        base = image.build_base_image()
        print(
            base.root,
            "(cached)" if base.built_s is None else f"(built in {base.built_s:.0f} s)",
        )
        return 0
    if args.cmd == "destroy":
        libvirtd.ensure_libvirtd()
        import libvirt

        conn = libvirt.open(scenario.URI)
        TestVm.remove_stale(conn, scenario.ScenarioConfig().shape.name)
        conn.close()
        return 0
    report = scenario.Scenario(scenario.ScenarioConfig(keep_vm=args.keep)).run()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
