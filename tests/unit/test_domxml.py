"""agent_host.domxml: writing, converting, resizing and parsing tiered domain XML.

Captured inputs live in tests/data/libvirt-9.0/ (see the README there for how they
were produced on libvirt 9.0.0 / QEMU 7.2).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent_host.allotments import parse_allotments, resize_device_xml
from agent_host.backend import Tier
from agent_host.domxml import convert_domain_xml, new_domain_xml
from agent_host.metadata import METADATA_NS, parse_metadata
from agent_host.vmspec import ALIASES, CHANNEL_NAME, TieredVmSpec
from hypertier_common.errors import BackendError, ConfigError

DATA = Path(__file__).resolve().parent.parent / "data" / "libvirt-9.0"
MiB = 1 << 20
NS = {"ht": METADATA_NS}


def _spec(**changes: object) -> TieredVmSpec:
    spec = TieredVmSpec(
        name="vm1",
        vcpus=4,
        fast_bytes=256 * MiB,
        slow_bytes=384 * MiB,
        fast_max_bytes=1024 * MiB,
        slow_max_bytes=2048 * MiB,
        host_fast_nodes=[0, 1],  # lists are accepted, stored as tuples
        host_slow_nodes=[2],
        disk_path="/var/lib/libvirt/images/vm1.qcow2",
        channel_path="/run/hypertier/vm1.sock",
        qos_class="gold",
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def _root(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def _read(name: str) -> str:
    return (DATA / name).read_text()


def test_spec_stores_node_lists_as_tuples() -> None:
    assert _spec().host_fast_nodes == (0, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"fast_bytes": 3 * MiB}, "multiple of", id="requested-not-block"),
        pytest.param(
            {"slow_bytes": 4096 * MiB}, "between 0 and", id="requested-above-max"
        ),
        pytest.param({"fast_max_bytes": 0}, "positive multiple", id="max-zero"),
        pytest.param({"block_bytes": 3 * MiB}, "power of two", id="block-not-pow2"),
        pytest.param(
            {"block_bytes": MiB}, "power of two >= 2 MiB", id="block-too-small"
        ),
        pytest.param({"host_slow_nodes": ()}, "host_slow_nodes", id="no-slow-nodes"),
        pytest.param({"vcpus": 0}, "vcpus", id="no-vcpus"),
        pytest.param({"name": "a b"}, "domain name", id="bad-name"),
        pytest.param({"domain_type": "xen"}, "domain_type", id="bad-type"),
        pytest.param({"initrd": "/boot/initrd"}, "need kernel", id="initrd-no-kernel"),
        pytest.param({"slow_boot_bytes": 0}, "slow_boot_bytes", id="no-boot-memory"),
    ],
)
def test_invalid_spec_raises_config_error(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(**changes)


def test_fast_cell_has_all_cpus_and_slow_cell_none() -> None:
    cells = _root(new_domain_xml(_spec()).xml).findall("cpu/numa/cell")
    assert [(c.get("id"), c.get("cpus")) for c in cells] == [("0", "0-3"), ("1", None)]


def test_cells_hold_only_boot_memory() -> None:
    cells = _root(new_domain_xml(_spec()).xml).findall("cpu/numa/cell")
    assert [(c.get("memory"), c.get("unit")) for c in cells] == [
        (str(256 * 1024), "KiB"),
        (str(128 * 1024), "KiB"),
    ]


def test_each_cell_is_bound_strictly_to_its_tier_host_nodes() -> None:
    memnodes = _root(new_domain_xml(_spec()).xml).findall("numatune/memnode")
    assert [m.attrib for m in memnodes] == [
        {"cellid": "0", "mode": "strict", "nodeset": "0,1"},
        {"cellid": "1", "mode": "strict", "nodeset": "2"},
    ]


def test_one_virtio_mem_device_per_guest_node() -> None:
    mems = _root(new_domain_xml(_spec()).xml).findall("devices/memory")
    got = [
        (
            m.get("model"),
            m.findtext("alias/../target/node"),
            m.find("alias").get("name"),  # type: ignore[union-attr]
            m.findtext("target/size"),
            m.findtext("target/block"),
            m.findtext("target/requested"),
            m.findtext("source/nodemask"),
        )
        for m in mems
    ]
    assert got == [
        ("virtio-mem", "0", "ua-hypertier-fast", "1048576", "2048", "262144", "0,1"),
        ("virtio-mem", "1", "ua-hypertier-slow", "2097152", "2048", "393216", "2"),
    ]


def test_max_memory_covers_boot_and_all_devices() -> None:
    root = _root(new_domain_xml(_spec()).xml)
    max_mem = root.find("maxMemory")
    assert max_mem is not None
    assert int(max_mem.get("slots", "0")) > 0
    assert int(max_mem.text or "0") == (256 + 128 + 1024 + 2048) * 1024


def test_channel_binds_unix_socket_with_hypertier_name() -> None:
    chan = _root(new_domain_xml(_spec()).xml).find("devices/channel")
    assert chan is not None
    assert chan.get("type") == "unix"
    assert chan.find("source").attrib == {  # type: ignore[union-attr]
        "mode": "bind",
        "path": "/run/hypertier/vm1.sock",
    }
    assert chan.find("target").attrib == {"type": "virtio", "name": CHANNEL_NAME}  # type: ignore[union-attr]


def test_metadata_round_trips_class_reservations_and_limits() -> None:
    meta = parse_metadata(new_domain_xml(_spec()).xml)
    assert meta is not None
    assert meta.qos_class == "gold"
    fast, slow = meta.tier(Tier.FAST), meta.tier(Tier.SLOW)
    assert fast is not None
    assert slow is not None
    assert (fast.reservation_bytes, fast.limit_bytes, fast.host_nodes) == (
        256 * MiB,
        1024 * MiB,
        (0, 1),
    )
    assert (slow.reservation_bytes, slow.limit_bytes, slow.emulated) == (
        384 * MiB,
        2048 * MiB,
        False,
    )


def _tier_element(reservation: str, limit: str) -> str:
    return (
        f'<hypertier:tiering xmlns:hypertier="{METADATA_NS}">'
        "<hypertier:class>gold</hypertier:class>"
        f'<hypertier:tier name="fast" reservation_bytes="{reservation}" '
        f'limit_bytes="{limit}" host_nodes="0"/></hypertier:tiering>'
    )


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("25165824.0", id="float-repr"),
        pytest.param("2.5165824e7", id="exponent"),
    ],
)
def test_metadata_with_integral_float_sizes_parses_as_int(limit: str) -> None:
    # Older `vm set` stored JSON floats as str(float); such a VM must stay adoptable.
    meta = parse_metadata(_tier_element("8388608.0", limit))
    assert meta is not None
    fast = meta.tier(Tier.FAST)
    assert fast is not None
    assert (fast.reservation_bytes, fast.limit_bytes) == (8 * MiB, 24 * MiB)
    assert type(fast.limit_bytes) is int
    assert type(fast.reservation_bytes) is int


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("25165824.5", id="fraction"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="inf"),
        pytest.param("1e999999999", id="huge"),
        pytest.param("24MiB", id="unit"),
    ],
)
def test_metadata_with_non_integral_size_names_the_attribute(limit: str) -> None:
    with pytest.raises(BackendError, match=r"fast limit_bytes.*whole number"):
        parse_metadata(_tier_element("0", limit))


def test_metadata_uses_hypertier_prefix() -> None:
    assert 'xmlns:hypertier="https://hypertier.dev/xmlns/domain/1"' in (
        new_domain_xml(_spec()).xml
    )


def test_single_host_node_marks_slow_tier_emulated() -> None:
    result = new_domain_xml(_spec(host_fast_nodes=(0,), host_slow_nodes=(0,)))
    assert any("slow tier is emulated" in n for n in result.notes)
    assert "<!-- hypertier: slow tier is emulated" in result.xml
    meta = parse_metadata(result.xml)
    assert meta is not None
    assert meta.tier(Tier.SLOW).emulated  # type: ignore[union-attr]


def test_distinct_host_nodes_give_no_notes() -> None:
    assert new_domain_xml(_spec()).notes == ()


def test_direct_kernel_boot_and_tcg() -> None:
    spec = _spec(kernel="/k", initrd="/i", cmdline="console=ttyS0", domain_type="qemu")
    root = _root(new_domain_xml(spec).xml)
    assert root.get("type") == "qemu"
    assert [root.findtext(f"os/{t}") for t in ("kernel", "initrd", "cmdline")] == [
        "/k",
        "/i",
        "console=ttyS0",
    ]
    assert root.find("cpu").get("mode") == "custom"  # type: ignore[union-attr]


def test_kvm_uses_host_passthrough_cpu() -> None:
    root = _root(new_domain_xml(_spec()).xml)
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_new_xml_parses_back_to_requested_allotments() -> None:
    fast, slow = parse_allotments(new_domain_xml(_spec()).xml)
    assert (fast.tier, fast.guest_node, fast.requested_bytes, fast.max_bytes) == (
        Tier.FAST,
        0,
        256 * MiB,
        1024 * MiB,
    )
    assert (slow.tier, slow.guest_node, slow.current_bytes, slow.host_nodes) == (
        Tier.SLOW,
        1,
        0,
        (2,),
    )


def test_parse_live_xml_before_guest_driver_has_zero_current() -> None:
    fast, slow = parse_allotments(_read("tiered-live.xml"))
    assert (fast.requested_bytes, fast.current_bytes) == (256 * MiB, 0)
    assert (slow.requested_bytes, slow.current_bytes) == (384 * MiB, 0)
    assert (fast.block_bytes, fast.max_bytes, fast.host_nodes) == (
        2 * MiB,
        1024 * MiB,
        (0,),
    )


def test_parse_live_xml_of_booted_guest_reads_plugged_current() -> None:
    fast, slow = parse_allotments(_read("tiered-live-plugged.xml"))
    assert (fast.requested_bytes, fast.current_bytes) == (256 * MiB, 256 * MiB)
    assert (slow.requested_bytes, slow.current_bytes) == (384 * MiB, 384 * MiB)


def test_parse_inactive_xml_has_zero_current() -> None:
    allotments = parse_allotments(_read("tiered-inactive.xml"))
    assert [a.current_bytes for a in allotments] == [0, 0]


def test_parse_live_xml_after_resize_shows_new_requested() -> None:
    slow = parse_allotments(_read("tiered-live-resized.xml"))[1]
    assert slow.requested_bytes == 512 * MiB


def test_parse_ignores_virtio_mem_devices_of_other_tools() -> None:
    xml = _read("tiered-live.xml").replace("ua-hypertier-slow", "ua-other")
    assert [a.tier for a in parse_allotments(xml)] == [Tier.FAST]


def test_parse_rejects_non_domain_xml() -> None:
    with pytest.raises(BackendError, match="expected a <domain>"):
        parse_allotments("<network/>")


def test_parse_rejects_broken_xml() -> None:
    with pytest.raises(BackendError, match="does not parse"):
        parse_allotments("<domain>")


def test_resize_xml_sets_requested_and_drops_current() -> None:
    dev = _root(resize_device_xml(_read("tiered-live.xml"), Tier.SLOW, 512 * MiB))
    assert dev.tag == "memory"
    assert dev.find("alias").get("name") == ALIASES[Tier.SLOW]  # type: ignore[union-attr]
    assert dev.findtext("target/requested") == str(512 * 1024)
    assert dev.find("target/current") is None
    assert dev.find("address") is not None  # libvirt matches the live device


@pytest.mark.parametrize(
    "requested",
    [
        pytest.param(-2 * MiB, id="negative"),
        pytest.param(3 * MiB, id="not-block-multiple"),
        pytest.param(2048 * MiB, id="above-size"),
    ],
)
def test_resize_xml_rejects_bad_sizes(requested: int) -> None:
    with pytest.raises(ConfigError):
        resize_device_xml(_read("tiered-live.xml"), Tier.FAST, requested)


def test_resize_xml_without_device_raises() -> None:
    xml = _read("tiered-live.xml").replace("ua-hypertier-fast", "ua-x")
    with pytest.raises(BackendError, match="no virtio-mem allotment for tier fast"):
        resize_device_xml(xml, Tier.FAST, 0)


def test_convert_keeps_devices_and_adds_tiering() -> None:
    result = convert_domain_xml(_read("plain-inactive.xml"), _spec(name="ht-plain"))
    root = _root(result.xml)
    assert root.find("devices/disk/source").get("file") == "/tmp/ht-x/d.qcow2"  # type: ignore[union-attr]
    assert [c.get("cpus") for c in root.findall("cpu/numa/cell")] == ["0-1", None]
    assert [a.tier for a in parse_allotments(result.xml)] == [Tier.FAST, Tier.SLOW]
    assert root.find("devices/channel[@type='unix']/target").get("name") == CHANNEL_NAME  # type: ignore[union-attr]
    assert root.find("metadata/ht:tiering", NS) is not None


def test_convert_is_idempotent() -> None:
    once = convert_domain_xml(_read("plain-inactive.xml"), _spec(name="ht-plain")).xml
    twice = convert_domain_xml(once, _spec(name="ht-plain")).xml
    assert twice == once


def test_convert_replaces_existing_tiering() -> None:
    xml = convert_domain_xml(_read("tiered-inactive.xml"), _spec(name="ht-capture")).xml
    assert len(_root(xml).findall("devices/memory")) == 2
    assert len(_root(xml).findall("numatune/memnode")) == 2


def test_convert_rejects_foreign_virtio_mem() -> None:
    xml = _read("tiered-inactive.xml").replace("ua-hypertier-fast", "ua-other")
    with pytest.raises(BackendError, match="not made by HyperTier"):
        convert_domain_xml(xml, _spec(name="ht-capture"))


def test_convert_rejects_other_domain_name() -> None:
    with pytest.raises(BackendError, match="spec is for 'vm1'"):
        convert_domain_xml(_read("plain-inactive.xml"), _spec())
