"""Command line of the real-VM harness: ``python -m tests.integration.vm --help``."""

from __future__ import annotations

import argparse
import json

from . import cli, image, libvirtd, scenario
from .machine import URI, TestVm

PROG = "python -m tests.integration.vm"
DESCRIPTION = "Build, boot and exercise a tiered Debian 12 VM under libvirt."
EPILOG = """examples:
  python -m tests.integration.vm build-image          # build or reuse the cached image
  python -m tests.integration.vm run                  # the whole scenario, JSON report
  python -m tests.integration.vm run --keep           # leave the VM running afterwards
  python -m tests.integration.vm destroy              # remove a kept VM
  HYPERTIER_VM_ACCEL=tcg HYPERTIER_CACHE=/tmp/c python -m tests.integration.vm run
"""


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("build-image", help="build (or reuse) the cached base image")
    run = sub.add_parser("run", help="run the end-to-end scenario, write the report")
    run.add_argument("--keep", action="store_true", help="leave the VM running")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("destroy", help="destroy and undefine the test VM")


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv, PROG, DESCRIPTION, EPILOG, _add_commands)
    missing = scenario.missing_prerequisites()
    if missing and args.cmd != "destroy":
        cli.print_missing(missing)
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

        conn = libvirt.open(URI)
        TestVm.remove_stale(conn, scenario.ScenarioConfig().shape.name)
        conn.close()
        return 0
    report = scenario.Scenario(scenario.ScenarioConfig(keep_vm=args.keep)).run()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
