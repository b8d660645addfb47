"""The ht-memnode TCG plugin: the plugin-address layout read from captured QEMU 7.2
monitor output (pure parsing), and the plugin itself loaded into this machine's
qemu-system-x86_64 running only its firmware (no guest kernel), where every RAM
access it counts must fall inside a block the layout names.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.peers import qemu_plugin as qp

DATA = Path(__file__).resolve().parents[2] / "data" / "qemu-7.2-monitor"
MiB = 1 << 20


def _captured() -> tuple[str, str, str]:
    return tuple(  # type: ignore[return-value]
        (DATA / f"info-{name}.txt").read_text()
        for name in ("ramblock", "mtree", "memory-devices")
    )


def test_ramblocks_name_offset_and_size() -> None:
    blocks = {b.name: b for b in qp.parse_ramblocks(_captured()[0])}
    assert blocks["ram-node1"].offset == 256 * MiB
    assert blocks["ram-node1"].size == 128 * MiB
    assert blocks["memua-hypertier-fast"].offset == 384 * MiB
    assert blocks["memua-hypertier-fast"].size == 512 * MiB


def test_mtree_gives_each_region_its_address_in_its_parent() -> None:
    addrs = qp.parse_mtree_addrs(_captured()[1])
    assert addrs["ram-node0"] == 0
    assert addrs["ram-node1"] == 256 * MiB  # inside pc.ram, after node 0
    assert addrs["memua-hypertier-fast"] == 0  # first in device-memory
    assert addrs["memua-hypertier-slow"] == 512 * MiB
    assert addrs["pc.bios"] == 0xFFFC0000


def test_memory_devices_give_node_and_plugged_size() -> None:
    devices = qp.parse_memory_devices(_captured()[2])
    assert devices["memua-hypertier-fast"] == qp.MemoryDevice(0, 128 * MiB)
    assert devices["memua-hypertier-slow"] == qp.MemoryDevice(1, 512 * MiB)


def test_plugin_ranges_of_the_peer_guest() -> None:
    ranges = {r.block: r for r in qp.plugin_ranges(*_captured())}
    # R + A: QEMU 7.2 adds the block's ram_addr offset and the region's address
    assert (ranges["ram-node0"].start, ranges["ram-node0"].end) == (0, 256 * MiB)
    assert ranges["ram-node1"].start == 512 * MiB
    assert ranges["ram-node1"].node == 1
    fast = ranges["memua-hypertier-fast"]
    assert (fast.start, fast.end, fast.node) == (384 * MiB, 512 * MiB, 0)
    slow = ranges["memua-hypertier-slow"]
    assert (slow.start, slow.end, slow.node) == (1408 * MiB, 1920 * MiB, 1)
    assert ranges["pc.bios"].node is None


def test_classify_attributes_buckets_to_nodes() -> None:
    ranges = qp.plugin_ranges(*_captured())
    buckets = {"0": 10, "400": 5, "600": 7, "1500": 3, "4000": 1}
    c = qp.classify(buckets, MiB, ranges)
    assert c.nodes == {0: 15, 1: 10}
    assert c.unmapped == 1
    assert c.ambiguous == 0
    assert c.node_share(0) == pytest.approx(0.6)
    assert c.total == 26


def test_growing_the_fast_device_makes_overlapping_buckets_ambiguous() -> None:
    ramblock, mtree, devices = _captured()
    grown = devices.replace("  size: 134217728", "  size: 268435456")
    ranges = qp.plugin_ranges(ramblock, mtree, grown)
    # fast now spans [384, 640) MiB, over ram-node1's [512, 640): never guessed
    c = qp.classify({"520": 4, "450": 2}, MiB, ranges)
    assert c.ambiguous == 4
    assert c.nodes == {0: 2}


def test_libvirt_commandline_loads_the_plugin() -> None:
    xml = qp.libvirt_commandline(Path("/x/p.so"), Path("/y/o.jsonl"), 500)
    assert xml == (
        "<qemu:commandline><qemu:arg value='-plugin'/>"
        "<qemu:arg value='/x/p.so,out=/y/o.jsonl,interval_ms=500'/>"
        "</qemu:commandline>"
    )


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    why = qp.qemu_plugin_support()
    if why:
        pytest.skip(why)
    try:
        return qp.build_plugin(tmp_path / "cache")
    except RuntimeError as err:
        pytest.skip(f"cannot build the plugin: {err}")


@pytest.fixture
def firmware_only_vm(plugin: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    out, mon = tmp_path / "counts.jsonl", tmp_path / "mon"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-M", "q35",
         "-m", "384M,slots=2,maxmem=1G", "-nodefaults", "-display", "none",
         "-serial", "none", "-monitor", f"unix:{mon},server,nowait",
         "-object", "memory-backend-ram,id=ram-node0,size=256M",
         "-object", "memory-backend-ram,id=ram-node1,size=128M",
         "-numa", "node,nodeid=0,memdev=ram-node0",
         "-numa", "node,nodeid=1,memdev=ram-node1",
         "-object", "memory-backend-ram,id=vmem0,size=256M",
         "-device", "virtio-mem-pci,node=0,memdev=vmem0,requested-size=0,id=vm0",
         "-plugin", qp.plugin_arg(plugin, out, 200)],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert qp.wait_for(mon, 60), "QEMU monitor socket never appeared"
        yield out, mon
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert "ht-memnode:" not in err, err


@pytest.mark.integration
def test_plugin_counts_firmware_accesses_inside_known_blocks(
    firmware_only_vm: tuple[Path, Path],
) -> None:
    out, mon = firmware_only_vm
    ranges = qp.monitor_layout(mon)
    deadline = time.monotonic() + 60
    samples = qp.read_jsonl(out)
    while time.monotonic() < deadline and len(samples) < 4:
        time.sleep(0.2)  # the plugin writes one line per 200 ms
        samples = qp.read_jsonl(out)
    start, *rest = samples
    assert start["type"] == "start"
    assert start["api_cur"] >= 1
    assert start["bucket_bytes"] == MiB
    last = rest[-1]
    assert last["ram"] == sum(last["buckets"].values()) > 0
    c = qp.classify(last["buckets"], last["bucket_bytes"], ranges)
    assert c.total == last["ram"]
    assert c.unmapped == 0
    assert c.ambiguous == 0
    assert c.nodes.get(0, 0) > 0  # SeaBIOS runs from low RAM (node 0)
    assert c.other > 0  # and executes from the pc.bios ROM


@pytest.mark.integration
@pytest.mark.parametrize(
    ("arg", "message"),
    [
        pytest.param("", "missing out=PATH", id="no-out"),
        pytest.param(",out=/tmp/x,color=red", "unknown argument", id="unknown"),
        pytest.param(",out=/tmp/x,bucket_kib=3", "power of two", id="bucket"),
        pytest.param(",out=/tmp/x,interval_ms=0", "interval_ms", id="interval"),
    ],
)
def test_plugin_refuses_bad_arguments(plugin: Path, arg: str, message: str) -> None:
    proc = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-M", "none", "-display", "none",
         "-plugin", f"{plugin}{arg}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stderr
