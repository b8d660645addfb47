"""Run one guest program with the collector beside it on the Debian 13 guest kernel,
with no tiering mechanism or with the kernel's own, and print a summary as JSON.

    python -m tests.integration.peers.probe [--mechanism none|kernel] [--kv]
        [--node0-mib 256] [--node1-mib 768] [--out DIR] -- slow-hot --hot-mib 64 ...

The arguments after ``--`` go to ``ht-workload``, or with ``--kv`` to ``ht-kvload``
against a ``redis-server`` started in the guest (persistence off; its memory per
node comes from the collector's ``--numa-maps``). The guest is plain QEMU/TCG
(plainvm.py): node 0 with both vCPUs, node 1 CPU-less and slower in the HMAT.
``kernel`` sets ``kernel.numa_balancing = 2`` and ``numa/demotion_enabled = 1``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.integration.peers.plainvm import PlainVm
from tests.integration.peers.programs import guest_files, parse_json_lines

MECHANISMS = {
    "none": "echo 0 > /proc/sys/kernel/numa_balancing\n",
    "kernel": (
        "echo 2 > /proc/sys/kernel/numa_balancing\n"
        "echo 1 > /sys/kernel/mm/numa/demotion_enabled\n"
    ),
}
# A Unix socket: the test image brings no network interface up, loopback included.
REDIS_SOCKET = "/tmp/redis.sock"
REDIS = (
    "redis-server --save '' --appendonly no --daemonize yes --port 0 "
    f"--unixsocket {REDIS_SOCKET} --logfile /tmp/redis.log\n"
    f"until redis-cli -s {REDIS_SOCKET} ping >/dev/null 2>&1; do sleep 0.2; done"
)
SCRIPT = """
T=/sys/devices/virtual/memory_tiering
for t in $T/memory_tier*; do
    echo "HT-TIER ${{t##*/}} $(cat $t/nodelist)"
done > /dev/console
{mechanism}
{server}
$P/{program} {args} > /tmp/w.jsonl 2>/tmp/w.err &
W=$!
tail -n +1 -f /tmp/w.jsonl /tmp/w.err > /dev/console &
T=$!
python3 $P/ht-collect.py --track workload=pid:$W {collect} > /tmp/c.jsonl 2>/tmp/c.err &
C=$!
wait $W
echo "HT-RC $?" > /dev/console
kill $C $T; wait $C
for f in w c; do
    echo "HT-BEGIN $f" > /dev/console; cat /tmp/$f.jsonl /tmp/$f.err > /dev/console
    echo "HT-END $f" > /dev/console
done
"""


def _section(console: str, name: str) -> list[dict[str, Any]]:
    m = re.search(rf"HT-BEGIN {name}\r?\n(.*?)HT-END {name}", console, re.S)
    if m is None:
        raise SystemExit(f"no {name} output on the console")
    lines = [ln for ln in m.group(1).splitlines() if ln.startswith("{")]
    return list(parse_json_lines(lines))


def summarize(console: str) -> dict[str, Any]:
    """Tiers, the workload's series and end line, the collector's end line."""
    workload = _section(console, "w")
    collector = _section(console, "c")
    samples = [r for r in workload if r["type"] in ("sample", "end")]
    end = collector[-1] if collector else {}
    if samples and "hot_node0_frac" in samples[0]:
        series = {"hot_node0_frac": [(r["t_s"], r["hot_node0_frac"]) for r in samples]}
    else:  # ht-kvload
        series = {
            "ops_per_s": [(r["t_s"], r["ops_per_s"]) for r in samples],
            "lat_p99_us": [(r["t_s"], r["lat_p99_us"]) for r in samples],
            "numa_kib": [(r["t_s"], r.get("numa_kib")) for r in collector[1:]],
        }
    return {
        "tiers": dict(re.findall(r"HT-TIER (\S+) (\S+)", console)),
        "rc": int(m.group(1)) if (m := re.search(r"HT-RC (\d+)", console)) else None,
        **series,
        "workload_start": workload[0] if workload else None,
        "workload_end": samples[-1] if samples else None,
        "vmstat": {k: v for k, v in end.get("vmstat", {}).items() if v},
        "cpu_s": end.get("cpu_s"),
        "tlb_flush": end.get("tlb_flush"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mechanism", choices=sorted(MECHANISMS), default="none")
    parser.add_argument("--node0-mib", type=int, default=256)
    parser.add_argument("--node1-mib", type=int, default=768)
    parser.add_argument("--kv", action="store_true", help="ht-kvload on redis")
    parser.add_argument("--suite", default="trixie")
    parser.add_argument("--out", type=Path, help="keep the console log here")
    parser.add_argument("workload", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    wargs = args.workload[1:] if args.workload[:1] == ["--"] else args.workload
    if not wargs:
        parser.error("give ht-workload's arguments after --")
    vm = PlainVm(
        args.out or Path(tempfile.mkdtemp(prefix="ht-probe-")),
        suite=args.suite,
        node0_mib=args.node0_mib,
        node1_mib=args.node1_mib,
    )
    script = SCRIPT.format(
        mechanism=MECHANISMS[args.mechanism],
        server=REDIS if args.kv else "",
        program="ht-kvload" if args.kv else "ht-workload",
        args=shlex.join(["--unix", REDIS_SOCKET, *wargs] if args.kv else wargs),
        collect="--numa-maps redis=comm:redis-server" if args.kv else "",
    )
    run = vm.run(script, guest_files())
    result = summarize(run.console)
    result["qemu_s"] = round(run.qemu_s, 1)
    result["mechanism"] = args.mechanism
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
