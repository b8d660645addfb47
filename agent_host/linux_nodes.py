"""Host NUMA nodes and their tiers, read from sysfs (``/sys/devices/system/node``).

`sysfs-devices-node <https://docs.kernel.org/admin-guide/mm/numaperf.html>`_:
each ``nodeN`` directory has a ``cpulist`` (empty on a CPU-less node: CXL.mem,
PMEM through dax/kmem) and a ``meminfo``. Used by the libvirt backend and by
``hypertier-host vm define``; needs no libvirt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from agent_host.backend import HostNode, Tier
from hypertier_common.cpulist import parse_cpulist
from hypertier_common.errors import BackendError

__all__ = ["read_host_nodes"]

_MEMINFO_RE = re.compile(r"^Node\s+\d+\s+(\w+):\s+(\d+)\s*kB", re.MULTILINE)


def read_host_nodes(
    root: Path,
    fast_nodes: Sequence[int] = (),
    slow_nodes: Sequence[int] = (),
) -> tuple[HostNode, ...]:
    """Host NUMA nodes from ``root``/sys/devices/system/node and their tiers.

    Nodes listed in ``fast_nodes``/``slow_nodes`` get that tier (a node in both
    is reported as fast; the slow tier is then emulated on it); other nodes are
    fast if they have CPUs and slow if CPU-less (CXL.mem, PMEM via dax/kmem).

    Raises:
        BackendError: the sysfs tree is missing or malformed.
    """
    base = root / "sys/devices/system/node"
    try:
        dirs = sorted(
            (p for p in base.iterdir() if re.fullmatch(r"node\d+", p.name)),
            key=lambda p: int(p.name[4:]),
        )
    except OSError as err:
        raise BackendError(f"cannot list NUMA nodes under {base}: {err}") from err
    if not dirs:
        raise BackendError(f"no NUMA nodes under {base}")
    nodes: list[HostNode] = []
    for path in dirs:
        node = int(path.name[4:])
        try:
            cpus = parse_cpulist((path / "cpulist").read_text())
            meminfo = dict(_MEMINFO_RE.findall((path / "meminfo").read_text()))
        except (OSError, ValueError) as err:
            raise BackendError(f"cannot read {path}: {err}") from err
        if node in fast_nodes:
            tier = Tier.FAST
        elif node in slow_nodes:
            tier = Tier.SLOW
        else:
            tier = Tier.FAST if cpus else Tier.SLOW
        nodes.append(
            HostNode(
                node=node,
                tier=tier,
                total_bytes=int(meminfo.get("MemTotal", 0)) * 1024,
                free_bytes=int(meminfo.get("MemFree", 0)) * 1024,
                has_cpus=bool(cpus),
            )
        )
    return tuple(nodes)
