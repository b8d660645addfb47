"""Show the ht-memnode TCG plugin on the test guest: the true node split of memory
accesses while ht-workload keeps its hot set on node 1, then on node 0.

Boots the cached Debian guest image with plain qemu-system-x86_64 (TCG, two NUMA
nodes, node 1 CPU-less, no libvirt), runs ``ht-workload slow-hot`` twice from the
payload disk's init (hot set bound to node 1, then to node 0, no tiering mechanism
running), powers off, and prints one JSON object: per phase, the workload's own
``hot_node0_frac`` and the plugin's share of node-attributed accesses on node 0.

    python -m tests.integration.peers.plugin_demo [--suite trixie] [--out DIR]

Needs root (mkfs.ext4 -d, the image cache), gcc, and a cached base image
(``$HYPERTIER_CACHE/base-*`` with the suite in its manifest.json).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.peers import qemu_plugin
from tests.integration.peers.programs import _cache_root, build_guest_programs

PHASE = re.compile(r"HT-PHASE (\S+) (start|end)")
INIT = """#!/bin/sh
# ht-memnode demo payload: two ht-workload runs, then power off.
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/sysrq
echo 0 > /proc/sys/kernel/numa_balancing 2>/dev/null
W=/opt/hypertier/ht-workload
ARGS="--total-mib {total} --hot-mib {hot} --duration-s {duration} --interval-s 2"
for node in 1 0; do
    echo "HT-PHASE hot-on-node$node start" > /dev/console
    $W slow-hot $ARGS --hot-node $node --cold-node 0 > /dev/console 2>&1
    echo "HT-PHASE hot-on-node$node end" > /dev/console
done
sync
echo o > /proc/sysrq-trigger
sleep 60
"""


def _base_image(suite: str) -> Path:
    for manifest in sorted(_cache_root().glob("base-*/manifest.json")):
        if json.loads(manifest.read_text()).get("suite") == suite:
            return manifest.parent
    raise SystemExit(f"no cached {suite} base image under {_cache_root()}")


def _payload(work: Path, args: argparse.Namespace) -> Path:
    payload = work / "payload"
    payload.mkdir()
    binary = build_guest_programs(names=["ht-workload"])["ht-workload"]
    (payload / "ht-workload").write_bytes(binary.read_bytes())
    (payload / "ht-workload").chmod(0o755)
    (payload / "init.sh").write_text(
        INIT.format(total=args.total_mib, hot=args.hot_mib, duration=args.duration_s)
    )
    disk = work / "payload.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(payload), str(disk), "32M"], check=True
    )
    return disk


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
    base = _base_image(args.suite)
    work = args.out or Path(tempfile.mkdtemp(prefix="ht-memnode-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    so = qemu_plugin.build_plugin(_cache_root() / "qemu-plugin")
    disk = _payload(work, args)
    overlay = work / "root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
         str(base / "rootfs.ext4"), str(overlay)],
        check=True,
    )  # fmt: skip
    counts, console, monitor = (
        work / "memnode.jsonl",
        work / "console.log",
        work / "mon",
    )
    for path in (counts, console, monitor):
        path.unlink(missing_ok=True)
    mib = args.node0_mib + args.node1_mib
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-smp", "2",
        "-m", f"{mib}M", "-nodefaults", "-display", "none",
        "-object", f"memory-backend-ram,id=ram-node0,size={args.node0_mib}M",
        "-object", f"memory-backend-ram,id=ram-node1,size={args.node1_mib}M",
        "-numa", "node,nodeid=0,cpus=0-1,memdev=ram-node0",
        "-numa", "node,nodeid=1,memdev=ram-node1",
        "-kernel", str(base / "vmlinuz"), "-initrd", str(base / "initrd.img"),
        "-append", "console=ttyS0 root=/dev/vda rw init=/sbin/ht-init loglevel=4",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={disk},if=virtio,format=raw,readonly=on",
        "-serial", f"file:{console}", "-monitor", f"unix:{monitor},server,nowait",
        "-plugin", qemu_plugin.plugin_arg(so, counts, 1000),
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    phases: dict[str, dict[str, float]] = {}
    ranges: list[qemu_plugin.PluginRange] = []
    try:
        while proc.poll() is None:
            if time.monotonic() - started > args.timeout_s:
                raise SystemExit(f"guest still running after {args.timeout_s} s")
            if not ranges and monitor.exists():
                ranges = qemu_plugin.monitor_layout(monitor)
            text = console.read_text(errors="replace") if console.exists() else ""
            for name, edge in PHASE.findall(text):
                phases.setdefault(name, {}).setdefault(edge, time.time())
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    samples = qemu_plugin.read_jsonl(counts)
    text = console.read_text(errors="replace")
    workload = [
        json.loads(line)
        for line in re.findall(r"^(\{\"type\":\"end\".*\})\s*$", text, re.M)
    ]
    result: dict[str, Any] = {
        "qemu_s": round(time.monotonic() - started, 1),
        "ranges": [
            {"block": r.block, "node": r.node, "start": r.start, "end": r.end}
            for r in ranges
        ],
        "phases": {},
    }
    bucket_bytes = samples[0]["bucket_bytes"] if samples else 1 << 20
    for i, (name, edges) in enumerate(sorted(phases.items(), reverse=True)):
        if "end" not in edges:
            continue
        delta = _phase_delta(
            [s for s in samples if s["type"] != "start"], edges["start"], edges["end"]
        )
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
