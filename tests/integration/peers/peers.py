"""The tiering mechanisms compared on the Debian 13 guest, each as documented.

Every peer sets both kernel switches itself (6.12 turns NUMA balancing on by
default on a two-node guest): ``kernel.numa_balancing`` and
``/sys/kernel/mm/numa/demotion_enabled``. A peer that needs a daemon starts it
after the workload has placed its pages and gets the workload's pid.

- ``none``: first touch; NUMA balancing off, demotion off.
- ``kernel``: NUMA balancing in tiering mode (2) plus reclaim-based demotion, with
  the default promotion rate limit (Documentation/admin-guide/sysctl/kernel.rst).
- ``damon``: damo with two kdamonds on physical memory, ``migrate_cold`` of node 0
  to node 1 (access rate 0 %, age >= 30 s, young pages rejected, quota 1 s per
  20 s) and ``migrate_hot`` of node 1 to node 0 (access rate 5-100 %, only young
  pages, quota 2 s per 20 s), monitoring intervals 100 ms / 2 s / 20 s, 100-10000
  regions: the migrate_hot/migrate_cold tiering set-up of the actions' authors for
  kernels without quota goals (goals on node memory arrive in 6.16). damo
  computes the physical regions of each node once, at start.
- ``memtierd``: the age policy with the soft-dirty tracker, values of its README
  (regions of 256 pages, scan every 4 s, policy interval 5 s, idle after 15 s to
  node 1, active for 10 s to node 0, mover 200 MB/s), on the workload's pid.
- ``hypertier``: HyperTier's guest agent on the workload's pid, the host agent on
  the host sizing the tiers.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

__all__ = ["PEERS", "Peer", "damo_command", "memtierd_config"]

PAYLOAD = "/opt/hypertier"
DAMO = f"PYTHONPATH={PAYLOAD}/damo python3 -m damo.damo"


@dataclass(frozen=True)
class Peer:
    """One mechanism: its kernel switches and how to start its daemon, if any."""

    name: str
    numa_balancing: int
    demotion_enabled: bool
    summary: str
    # Guest processes whose CPU time is the mechanism's (by /proc/PID/comm prefix);
    # the peer's own daemon is counted by pid.
    kernel_threads: tuple[str, ...] = ()
    needs_host_agent: bool = False

    def sysctl_commands(self) -> str:
        return (
            f"echo {self.numa_balancing} > /proc/sys/kernel/numa_balancing && "
            f"echo {'true' if self.demotion_enabled else 'false'} "
            "> /sys/kernel/mm/numa/demotion_enabled"
        )


def damo_command() -> str:
    """``damo start`` for the two tiering kdamonds (see the module docstring)."""
    common = (
        "--ops paddr --monitoring_intervals 100ms 2s 20s "
        "--monitoring_nr_regions_range 100 10000 --damos_sz_region 4096 max"
    )
    cold = (
        f"--numa_node 0 {common} --damos_action migrate_cold 1 "
        "--damos_filter young matching --damos_access_rate 0% 0% "
        "--damos_age 30s max --damos_quotas 1s 50G 20s 0 0 1%"
    )
    hot = (
        f"--numa_node 1 {common} --damos_action migrate_hot 0 "
        "--damos_filter young nomatching --damos_access_rate 5% 100% "
        "--damos_age 0 max --damos_quotas 2s 50G 20s 0 0 1%"
    )
    counts = "--damos_nr_filters 1 1 --nr_targets 1 1 --nr_schemes 1 1 --nr_ctxs 1 1"
    return f"{DAMO} start {cold} {hot} {counts}"


def memtierd_config(pid: int) -> str:
    """memtierd's YAML: the age policy over the soft-dirty tracker on ``pid``."""
    policy = {
        "PidWatcher": {"Name": "pidlist", "Config": json.dumps({"Pids": [pid]})},
        "Tracker": {
            "Name": "softdirty",
            "Config": json.dumps(
                {
                    "PagesInRegion": 256,
                    "MaxCountPerRegion": 1,
                    "ScanIntervalMs": 4000,
                    "RegionsUpdateMs": 0,
                    "SkipPageProb": 0,
                    "PagemapReadahead": 0,
                }
            ),
        },
        "Mover": {"IntervalMs": 20, "Bandwidth": 200},
        "IntervalMs": 5000,
        "IdleDurationMs": 15000,
        "IdleNumas": [1],
        "ActiveDurationMs": 10000,
        "ActiveNumas": [0],
    }
    return (
        "policy:\n  name: age\n  config: " + shlex.quote(json.dumps(policy)) + "\n"
    ).replace("'", "'")


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("none", 0, False, "first touch: NUMA balancing and demotion off"),
        Peer(
            "kernel",
            2,
            True,
            "numa_balancing=2 (tiering) + demotion_enabled",
            kernel_threads=("kswapd",),
        ),
        Peer(
            "damon",
            0,
            False,
            "damo: migrate_hot on node 1, migrate_cold on node 0 (paddr)",
            kernel_threads=("kdamond",),
        ),
        Peer(
            "memtierd",
            0,
            False,
            "memtierd age policy, soft-dirty tracker",
        ),
        Peer(
            "hypertier",
            0,
            False,
            "HyperTier guest agent, host agent sizing the tiers",
            needs_host_agent=True,
        ),
    )
}
