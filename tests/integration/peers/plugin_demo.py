"""Show the ht-memnode TCG plugin on the test guest: the true node split of memory
accesses while ht-workload keeps its hot set on node 1, then on node 0.

Boots the cached Debian guest image in plain QEMU (plainvm.py; TCG, two NUMA
nodes, node 1 CPU-less), runs ``ht-workload slow-hot`` twice from the payload's
init (hot set bound to node 1, then to node 0; NUMA balancing off, no tiering
mechanism), powers off, and prints one JSON object: per phase, the workload's own
``hot_node0_frac`` and the plugin's accesses per node.

    python -m tests.integration.peers.plugin_demo [--suite trixie] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.peers import qemu_plugin
from tests.integration.peers.plainvm import PlainVm
from tests.integration.peers.programs import _cache_root, build_guest_programs

PHASE = re.compile(r"HT-PHASE (\S+) (start|end)")
SCRIPT = """
echo 0 > /proc/sys/kernel/numa_balancing 2>/dev/null
ARGS="--total-mib {total} --hot-mib {hot} --duration-s {duration} --interval-s 2"
for node in 1 0; do
    echo "HT-PHASE hot-on-node$node start" > /dev/console
    $P/ht-workload slow-hot $ARGS --hot-node $node --cold-node 0 > /dev/console 2>&1
    echo "HT-PHASE hot-on-node$node end" > /dev/console
done
"""


def _phase_delta(
    samples: list[dict[str, Any]], start: float, end: float
) -> dict[str, int]:
    """Bucket counts between the last plugin sample before ``start`` and the
    first after ``end`` (host unix time)."""
    before = [s for s in samples if s["unix_s"] <= start]
    after = [s for s in samples if s["unix_s"] >= end]
    if not before or not after:
        raise SystemExit("plugin samples do not cover the phase")
    a, b = before[-1]["buckets"], after[0]["buckets"]
    return {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0) > 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="trixie")
    parser.add_argument("--out", type=Path, help="keep logs here (default: temp)")
    parser.add_argument("--node0-mib", type=int, default=512)
    parser.add_argument("--node1-mib", type=int, default=512)
    parser.add_argument("--total-mib", type=int, default=256)
    parser.add_argument("--hot-mib", type=int, default=32)
    parser.add_argument("--duration-s", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=1500)
    args = parser.parse_args(argv)
    why = qemu_plugin.qemu_plugin_support()
    if why:
        raise SystemExit(why)
    work = args.out or Path(tempfile.mkdtemp(prefix="ht-memnode-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    so = qemu_plugin.build_plugin(_cache_root() / "qemu-plugin")
    counts, monitor = work / "memnode.jsonl", work / "mon"
    for path in (counts, monitor):
        path.unlink(missing_ok=True)
    vm = PlainVm(
        work,
        suite=args.suite,
        node0_mib=args.node0_mib,
        node1_mib=args.node1_mib,
        hmat=False,
        extra_args=[
            "-monitor", f"unix:{monitor},server,nowait",
            "-plugin", qemu_plugin.plugin_arg(so, counts, 1000),
        ],
    )  # fmt: skip
    phases: dict[str, dict[str, float]] = {}
    ranges: list[qemu_plugin.PluginRange] = []

    def watch(console: str) -> None:
        if not ranges and monitor.exists():
            ranges.extend(qemu_plugin.monitor_layout(monitor))
        for name, edge in PHASE.findall(console):
            phases.setdefault(name, {}).setdefault(edge, time.time())

    script = SCRIPT.format(
        total=args.total_mib, hot=args.hot_mib, duration=args.duration_s
    )
    run = vm.run(
        script,
        build_guest_programs(names=["ht-workload"]),
        timeout_s=args.timeout_s,
        watch=watch,
    )
    samples = [s for s in qemu_plugin.read_jsonl(counts) if s["type"] != "start"]
    ends = re.findall(r"^(\{\"type\":\"end\".*\})\s*$", run.console, re.M)
    workload = [json.loads(line) for line in ends]
    result: dict[str, Any] = {
        "qemu_s": round(run.qemu_s, 1),
        "ranges": [
            {"block": r.block, "node": r.node, "start": r.start, "end": r.end}
            for r in ranges
        ],
        "phases": {},
    }
    bucket_bytes = samples[0]["bucket_bytes"] if samples else 1 << 20
    # phases in the order the guest ran them, matching the workloads' end lines
    order = sorted(phases, key=lambda name: phases[name]["start"])
    for i, name in enumerate(order):
        edges = phases[name]
        if "end" not in edges:
            continue
        delta = _phase_delta(samples, edges["start"], edges["end"])
        c = qemu_plugin.classify(delta, bucket_bytes, ranges)
        result["phases"][name] = {
            "plugin_node0_share": round(c.node_share(0), 4),
            "plugin_accesses": c.nodes,
            "plugin_other": c.other,
            "plugin_ambiguous": c.ambiguous,
            "plugin_unmapped": c.unmapped,
            "workload_hot_node0_frac": (
                workload[i]["hot_node0_frac"] if i < len(workload) else None
            ),
            "workload_ops": workload[i]["ops"] if i < len(workload) else None,
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
