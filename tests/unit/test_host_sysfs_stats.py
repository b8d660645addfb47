"""Parsers of the libvirt backend: sysfs NUMA nodes, domain stats, error codes."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from agent_host.backend import Tier
from agent_host.errors import AccessDenied, BackendError, NoSuchDomain, Unsupported
from agent_host.libvirt_backend import (
    LibvirtHostBackend,
    _map_error,
    channel_path,
    parse_cpulist,
    read_host_nodes,
    stats_from_record,
)

DATA = Path(__file__).parents[1] / "data"


def _node(root: Path, node: int, cpus: str, total_kib: int) -> None:
    d = root / f"sys/devices/system/node/node{node}"
    d.mkdir(parents=True)
    (d / "cpulist").write_text(cpus + "\n")
    (d / "meminfo").write_text(
        f"Node {node} MemTotal:       {total_kib} kB\n"
        f"Node {node} MemFree:        {total_kib // 2} kB\n"
    )


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        pytest.param("0-3,8,10-11\n", (0, 1, 2, 3, 8, 10, 11), id="ranges"),
        pytest.param("\n", (), id="cpu-less"),
        pytest.param("5", (5,), id="single"),
    ],
)
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


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


def test_stats_sum_query_stats_fields() -> None:
    record = {
        "cpu.time": 2_500_000_000,
        "balloon.current": 1024,
        "vm.remote_tlb_flush.sum": 7,
        "vcpu.0.tlb_flush.sum": 3,
        "vcpu.1.tlb_flush.sum": 4,
        "vcpu.0.exits.sum": 100,
        "vcpu.1.exits.sum": 50,
    }
    stats = stats_from_record("vm1", record)
    assert (stats.remote_tlb_flush, stats.tlb_flush, stats.exits) == (7, 7, 150)
    assert stats.cpu_time_s == 2.5
    assert stats.balloon_current_bytes == 1 << 20


def test_missing_stats_stay_none() -> None:
    stats = stats_from_record("vm1", {"state.state": 1})
    assert stats.remote_tlb_flush is None
    assert stats.exits is None
    assert stats.cpu_time_s is None


def _err(code: int) -> libvirt.libvirtError:
    err = libvirt.libvirtError("boom")
    err.err = (code, 0, "boom", 0, "", None, None, 0, 0)
    return err


@pytest.mark.parametrize(
    ("code", "exc"),
    [
        pytest.param(libvirt.VIR_ERR_NO_DOMAIN, NoSuchDomain, id="no-domain"),
        pytest.param(libvirt.VIR_ERR_NO_SUPPORT, Unsupported, id="no-support"),
        pytest.param(
            libvirt.VIR_ERR_OPERATION_UNSUPPORTED, Unsupported, id="op-unsupported"
        ),
        pytest.param(libvirt.VIR_ERR_AUTH_FAILED, AccessDenied, id="auth"),
        pytest.param(libvirt.VIR_ERR_INTERNAL_ERROR, BackendError, id="internal"),
    ],
)
def test_libvirt_errors_map_by_code(code: int, exc: type[Exception]) -> None:
    assert isinstance(_map_error(_err(code), "vm1", "resize"), exc)


def test_channel_path_found_by_name() -> None:
    xml = """<domain><devices>
      <channel type='unix'><source mode='bind' path='/run/a.sock'/>
        <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
      <channel type='unix'><source mode='bind' path='/run/h.sock'/>
        <target type='virtio' name='org.hypertier.0'/></channel>
    </devices></domain>"""
    assert channel_path(xml) == "/run/h.sock"
    assert channel_path("<domain><devices/></domain>") is None


def test_libvirt_backend_reconnects_after_connection_loss() -> None:
    backend = LibvirtHostBackend("test:///default", root=DATA / "host-sysfs-1node")
    try:
        backend._conn.close()  # what a libvirtd restart does to the connection
        assert isinstance(backend.domains(), list)
        assert backend.reconnects == 1
    finally:
        backend.close()
