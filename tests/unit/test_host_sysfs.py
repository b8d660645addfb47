"""Host NUMA nodes from sysfs (agent_host.linux_nodes): tiers, sizes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_host.backend import Tier
from agent_host.linux_nodes import read_host_nodes
from hypertier_common.errors import BackendError
from tests import DATA


def _node(root: Path, node: int, cpus: str, total_kib: int) -> None:
    d = root / f"sys/devices/system/node/node{node}"
    d.mkdir(parents=True)
    (d / "cpulist").write_text(cpus + "\n")
    (d / "meminfo").write_text(
        f"Node {node} MemTotal:       {total_kib} kB\n"
        f"Node {node} MemFree:        {total_kib // 2} kB\n"
    )


def test_captured_single_node_host_is_all_fast() -> None:
    nodes = read_host_nodes(DATA / "host-sysfs-1node")
    assert [(n.node, n.tier, n.has_cpus) for n in nodes] == [(0, Tier.FAST, True)]
    assert nodes[0].total_bytes == 7300896 * 1024


def test_cpu_less_node_is_the_slow_tier(tmp_path: Path) -> None:
    _node(tmp_path, 0, "0-7", 1 << 24)
    _node(tmp_path, 1, "", 1 << 25)  # a CXL.mem expander
    nodes = read_host_nodes(tmp_path)
    assert [n.tier for n in nodes] == [Tier.FAST, Tier.SLOW]
    assert nodes[1].free_bytes == (1 << 24) * 1024


def test_configured_tiers_override_discovery(tmp_path: Path) -> None:
    _node(tmp_path, 0, "0-3", 1 << 20)
    _node(tmp_path, 1, "4-7", 1 << 20)
    nodes = read_host_nodes(tmp_path, fast_nodes=(0,), slow_nodes=(1,))
    assert [n.tier for n in nodes] == [Tier.FAST, Tier.SLOW]


def test_missing_sysfs_is_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="NUMA nodes"):
        read_host_nodes(tmp_path)
