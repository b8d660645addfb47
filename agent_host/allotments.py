"""Each tier's virtio-mem allotment in a tiered domain's XML: read back
(:func:`parse_allotments`) and resized (:func:`resize_device_xml`). Pure.

A resize changes ``<requested>`` of the tier's ``<memory model='virtio-mem'>``
device on the running domain; the guest's virtio-mem driver then (un)plugs
blocks and libvirt reports the progress as ``<current>``
(https://libvirt.org/formatdomain.html#memory-devices).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

from agent_host.backend import Allotment, Tier
from agent_host.vmspec import (
    ALIASES,
    DEFAULT_BLOCK_BYTES,
    GUEST_NODES,
    KiB,
    MiB,
    check_tier_sizes,
)
from hypertier_common.cpulist import parse_cpulist
from hypertier_common.errors import BackendError

__all__ = ["parse_allotments", "parse_domain", "resize_device_xml"]

_UNIT_BYTES = {
    "b": 1, "bytes": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}  # fmt: skip


def parse_domain(xml: str) -> ET.Element:
    """The ``<domain>`` element of ``xml``.

    Raises:
        BackendError: ``xml`` does not parse or is not a domain.
    """
    try:
        domain = ET.fromstring(xml)
    except ET.ParseError as err:
        raise BackendError(f"domain XML does not parse: {err}") from err
    if domain.tag != "domain":
        raise BackendError(f"expected a <domain> element, got <{domain.tag}>")
    return domain


def _bytes(elem: ET.Element | None, what: str) -> int | None:
    if elem is None or elem.text is None:
        return None
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _UNIT_BYTES:
        raise BackendError(f"{what}: unknown unit {elem.get('unit')!r}")
    try:
        return int(elem.text.strip()) * _UNIT_BYTES[unit]
    except ValueError as err:
        raise BackendError(f"{what}: not an integer: {elem.text!r}") from err


def _tier_of(mem: ET.Element, node: int) -> Tier | None:
    alias = mem.find("alias")
    name = alias.get("name") if alias is not None else None
    for tier, tier_alias in ALIASES.items():
        if name == tier_alias:
            return tier
    if name is None:
        # An inactive definition written by another tool: fall back to the node.
        return next((t for t, n in GUEST_NODES.items() if n == node), None)
    return None


def _virtio_mem_devices(domain: ET.Element) -> list[ET.Element]:
    devices = domain.find("devices")
    if devices is None:
        return []
    return [m for m in devices.findall("memory") if m.get("model") == "virtio-mem"]


def parse_allotments(xml: str) -> tuple[Allotment, ...]:
    """Read each tier's virtio-mem allotment back from a domain XML.

    Works on live XML (``virDomainGetXMLDesc(0)``: ``current_bytes`` is what the
    guest has plugged) and on inactive XML (no ``<current>``: ``current_bytes`` is
    0). Devices are assigned to tiers by their ``ua-hypertier-*`` alias; host nodes
    come from the device ``<nodemask>`` or else the ``<memnode>`` of its guest node.
    Devices of other tools are ignored.

    Raises:
        BackendError: the XML does not parse or a size is malformed.
    """
    domain = parse_domain(xml)
    memnodes = {
        int(m.get("cellid", "-1")): parse_cpulist(m.get("nodeset") or "")
        for m in domain.findall("numatune/memnode")
    }
    boot = _cell_memory(domain)
    result: list[Allotment] = []
    for mem in _virtio_mem_devices(domain):
        target = mem.find("target")
        if target is None:
            raise BackendError("virtio-mem device without <target>")
        node_text = target.findtext("node")
        if node_text is None:
            raise BackendError("virtio-mem device without <target><node>")
        node = int(node_text)
        tier = _tier_of(mem, node)
        if tier is None:
            continue
        size = _bytes(target.find("size"), "virtio-mem <size>")
        block = _bytes(target.find("block"), "virtio-mem <block>")
        if size is None or block is None:
            raise BackendError(
                f"virtio-mem device of tier {tier.value} lacks size or block"
            )
        nodemask = mem.findtext("source/nodemask")
        host_nodes = parse_cpulist(nodemask) if nodemask else memnodes.get(node, ())
        result.append(
            Allotment(
                tier=tier,
                guest_node=node,
                requested_bytes=_bytes(target.find("requested"), "<requested>") or 0,
                current_bytes=_bytes(target.find("current"), "<current>") or 0,
                max_bytes=size,
                block_bytes=block,
                host_nodes=host_nodes,
                boot_bytes=boot.get(node, 0),
            )
        )
    return tuple(sorted(result, key=lambda a: a.guest_node))


def _cell_memory(domain: ET.Element) -> dict[int, int]:
    """Fixed memory of each guest NUMA cell (``<cpu><numa><cell memory=...>``)."""
    out: dict[int, int] = {}
    for cell in domain.findall("cpu/numa/cell"):
        text, unit = cell.get("memory"), (cell.get("unit") or "KiB").lower()
        if text is None or unit not in _UNIT_BYTES:
            raise BackendError(f"NUMA cell {cell.get('id')!r}: bad memory/unit")
        try:
            out[int(cell.get("id", "-1"))] = int(text) * _UNIT_BYTES[unit]
        except ValueError as err:
            raise BackendError(f"NUMA cell memory not an integer: {text!r}") from err
    return out


def resize_device_xml(xml: str, tier: Tier, requested_bytes: int) -> str:
    """Device XML that asks the running VM's ``tier`` allotment for a new size.

    ``xml`` is the live domain XML; the result is that tier's ``<memory>`` device
    with ``<requested>`` replaced (``<current>`` dropped), ready for
    ``virDomainUpdateDeviceFlags(dev, VIR_DOMAIN_AFFECT_LIVE)``, which libvirt 9.0
    matches to the device by alias. Asynchronous: poll :func:`parse_allotments`
    until ``current_bytes`` equals ``requested_bytes``.

    Raises:
        BackendError: the domain has no allotment for ``tier``.
        ConfigError: ``requested_bytes`` is negative, above the device size, or not
            a multiple of its block size.
    """
    domain = parse_domain(xml)
    for mem in _virtio_mem_devices(domain):
        target = mem.find("target")
        if (
            target is None
            or _tier_of(mem, int(target.findtext("node") or "-1")) is not tier
        ):
            continue
        size = _bytes(target.find("size"), "virtio-mem <size>") or 0
        block = (
            _bytes(target.find("block"), "virtio-mem <block>") or DEFAULT_BLOCK_BYTES
        )
        check_tier_sizes(tier, requested_bytes, size, block)
        dev = copy.deepcopy(mem)
        dev_target = dev.find("target")
        assert dev_target is not None  # copied from target above
        current = dev_target.find("current")
        if current is not None:
            dev_target.remove(current)
        requested = dev_target.find("requested")
        if requested is None:
            requested = ET.SubElement(dev_target, "requested")
        requested.attrib = {"unit": "KiB"}
        requested.text = str(requested_bytes // KiB)
        ET.indent(dev, space="  ")
        return ET.tostring(dev, encoding="unicode")
    raise BackendError(f"domain has no virtio-mem allotment for tier {tier.value}")
