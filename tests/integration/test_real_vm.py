"""Issue 6: the whole loop on a real VM (Debian 12 guest, libvirt qemu:///system).

One module-scoped run of tests/integration/vm/scenario.py boots the VM once (TCG
unless the KVM probe boots the kernel), then each test checks one outcome from its
report. Timings are printed to the terminal; the JSON report goes to
$HYPERTIER_REPORT_DIR (default $HYPERTIER_CACHE/reports). Steps that cannot run here
skip with the scenario's exact reason. About 5-10 minutes on 2 cores (first run +3
minutes to build the cached image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.vm import scenario

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture(scope="module")
def report(say: Callable[[str], None]) -> dict[str, Any]:
    missing = scenario.missing_prerequisites()
    if missing:
        pytest.skip("real-VM test needs: " + "; ".join(missing))
    say("")
    return scenario.Scenario(scenario.ScenarioConfig(), say=say).run()


def _need(report: dict[str, Any], key: str) -> Any:
    if key in report["skipped"]:
        pytest.skip(report["skipped"][key])
    if key not in report:
        failed = {k: v for k, v in report["errors"].items()}
        pytest.fail(f"scenario did not produce {key!r}; step errors: {failed}")
    return report[key]


def test_no_step_failed(report: dict[str, Any]) -> None:
    assert report["errors"] == {}


def test_accelerator_is_chosen_and_reported(report: dict[str, Any]) -> None:
    accel = _need(report, "accel")
    assert accel["name"] in ("kvm", "tcg")
    assert accel["reason"]


def test_vm_boots_to_test_driver(report: dict[str, Any]) -> None:
    boot = _need(report, "boot")
    assert boot["wall_s"] < scenario.ScenarioConfig().boot_timeout_s


def test_guest_has_fast_node_with_cpus_and_cpuless_slow_node(
    report: dict[str, Any],
) -> None:
    nodes = _need(report, "topology")["nodes"]
    assert sorted(nodes) == ["0", "1"]
    assert nodes["0"]["cpulist"] == "0-1"
    assert nodes["1"]["cpulist"] == ""


def test_virtio_mem_plugs_requested_size_on_each_node(report: dict[str, Any]) -> None:
    topo = _need(report, "topology")
    assert topo["virtio_mem_loaded"]
    for allot in topo["allotments"].values():
        assert allot["current_bytes"] == allot["requested_bytes"] > 0
    shape = scenario.ScenarioConfig().shape
    block = topo["memory_block_bytes"]
    # Per node: boot memory plus the plugged allotment, counted in online memory
    # blocks (MemTotal is not exact: the kernel puts the memmap of hotplugged
    # ZONE_MOVABLE memory on whichever node has normal memory). A block only
    # partly backed by boot memory is online too.
    assert topo["online_blocks_per_node"] == {
        "0": -(-(shape.fast_boot_mib + shape.fast_mib) * MiB // block),
        "1": -(-(shape.slow_boot_mib + shape.slow_mib) * MiB // block),
    }


@pytest.mark.parametrize(
    "index", range(4), ids=["grow-fast", "shrink-fast", "grow-slow", "shrink-slow"]
)
def test_live_resize_reaches_host_and_guest(report: dict[str, Any], index: int) -> None:
    step = _need(report, "resizes")[index]
    assert step["host_current_s"] is not None, (
        "libvirt <current> never reached <requested>"
    )
    assert step["guest_seen_s"] is not None, "guest node size did not follow"
    delta_kib = (step["to_bytes"] - step["from_bytes"]) // 1024
    assert (
        step["node_memtotal_kib_after"] - step["node_memtotal_kib_before"] == delta_kib
    )


def test_guest_agent_demotes_before_fast_tier_shrinks(report: dict[str, Any]) -> None:
    order = _need(report, "demote_before_shrink")
    assert order["demoted_first"], order


def test_workload_never_loses_data(report: dict[str, Any]) -> None:
    work = _need(report, "workload")
    assert (work["rc"], work["errors"]) == (0, 0)
    assert work["iterations"] > 0


@pytest.mark.parametrize(
    ("step", "share", "nodes"),
    [
        pytest.param("placement", "hot_share_on_fast", "hot_nodes", id="hot-on-fast"),
        pytest.param(
            "placement_squeezed",
            "cold_share_on_slow",
            "cold_nodes",
            id="squeezed-cold-on-slow",
        ),
        pytest.param(
            "placement_squeezed",
            "hot_share_on_fast",
            "hot_nodes",
            id="squeezed-hot-stays-on-fast",
        ),
    ],
)
def test_pages_end_on_their_tier(
    report: dict[str, Any], step: str, share: str, nodes: str
) -> None:
    """Hot pages on the fast node; when the fast tier is squeezed, cold pages go to
    the slow node while the hot ones stay."""
    placement = _need(report, step)
    assert placement[share] >= scenario.CONVERGED_SHARE, (
        f"{nodes} {placement[nodes]}\n"
        + placement.get("agent_log_squeeze", "")
        + "\n...\n"
        + placement["agent_log_tail"]
    )


def test_host_agent_resizes_fast_tier_live(report: dict[str, Any]) -> None:
    steps = _need(report, "host_agent_resizes")
    for step in steps:
        assert step["host_current_s"] is not None, step
        assert step["guest_seen_s"] is not None, step


def test_guest_tlb_flush_counts_reported(report: dict[str, Any]) -> None:
    counts = _need(report, "tlb_flush")
    assert sum(counts.values()) > 0


def test_host_kvm_stats_reported(report: dict[str, Any]) -> None:
    stats = _need(report, "host_stats")
    assert stats["domstats"]
    if not stats["kvm_stats_available"]:
        pytest.skip(report["skipped"]["kvm_stats"])


def test_whole_run_fits_in_fifteen_minutes(report: dict[str, Any]) -> None:
    assert report["total_s"] <= 15 * 60


@pytest.mark.parametrize("which", ["guest_agent_kill9", "host_agent_restart"])
def test_channel_is_back_after_a_restart(report: dict[str, Any], which: str) -> None:
    """Reports accepted and the allotment received again after each restart."""
    step = _need(report, "restarts")[which]
    assert step["report_accepted_s"] is not None, step
    assert step["allot_received_s"] is not None, step
