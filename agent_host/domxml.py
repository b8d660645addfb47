"""libvirt domain XML for tiered VMs: write a new one or convert an existing one.

Writes the `domain XML <https://libvirt.org/formatdomain.html>`_ of a VM whose guest
NUMA node 0 is the fast tier (all vCPUs) and node 1 a CPU-less slow tier, each with
one resizable ``<memory model='virtio-mem'>`` device (pure functions; the spec
and layout constants are :mod:`agent_host.vmspec`'s). No libvirt import: the
caller passes the string to ``virDomainDefineXML``.

Layout of a tiered domain (sizes in KiB in the XML, in bytes in this API)::

    <maxMemory slots='N'>boot + sum of virtio-mem sizes</maxMemory>
    <cpu><numa>
      <cell id='0' cpus='0-3' memory='fast boot'/>       fast tier, all vCPUs
      <cell id='1' memory='slow boot'/>                  slow tier, CPU-less
    </numa></cpu>
    <numatune>
      <memnode cellid='0' mode='strict' nodeset='host fast nodes'/>
      <memnode cellid='1' mode='strict' nodeset='host slow nodes'/>
    </numatune>
    <devices>
      <memory model='virtio-mem'>                          one per guest node
        <source><nodemask>host nodes</nodemask></source>
        <target><size/><node/><block/><requested/></target>
        <alias name='ua-hypertier-fast'/>                  'ua-' prefix: libvirt 9.0
      </memory>
      <channel type='unix'> ... name='org.hypertier.0' </channel>
    </devices>
    <metadata><hypertier:tiering xmlns:hypertier='https://hypertier.dev/xmlns/domain/1'>

Resizing a tier means changing ``<requested>`` of its device on the running domain
(:func:`agent_host.allotments.resize_device_xml`); the guest's virtio-mem driver
then (un)plugs blocks and libvirt reports the progress as ``<current>``
(:func:`agent_host.allotments.parse_allotments`). The metadata element is
:mod:`agent_host.metadata`'s.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from agent_host.allotments import parse_domain
from agent_host.backend import Tier
from agent_host.metadata import METADATA_NS, METADATA_PREFIX, metadata_element
from agent_host.vmspec import (
    ALIASES,
    CHANNEL_NAME,
    GUEST_NODES,
    KiB,
    TieredVmSpec,
)
from hypertier_common.errors import BackendError

__all__ = ["TieredDomainXml", "convert_domain_xml", "new_domain_xml"]

# virtio-mem devices take no DIMM slot, but libvirt 9.0 refuses any memory device
# without <maxMemory slots='...'>; keep a few slots free for DIMMs added later.
_MAX_MEMORY_SLOTS = 16


def _nodeset(nodes: Sequence[int]) -> str:
    return ",".join(str(n) for n in sorted(set(nodes)))


@dataclass(frozen=True)
class TieredDomainXml:
    """The result of :func:`new_domain_xml` / :func:`convert_domain_xml`.

    ``xml`` is the domain XML for ``virDomainDefineXML``; ``notes`` are facts the
    caller should log once (for example that the slow tier is emulated).
    """

    xml: str
    notes: tuple[str, ...]


def _kib(size_bytes: int) -> str:
    return str(size_bytes // KiB)


def _sub(
    parent: ET.Element, tag: str, text: str | None = None, **attrib: str
) -> ET.Element:
    elem = ET.SubElement(parent, tag, attrib)
    if text is not None:
        elem.text = text
    return elem


def _virtio_mem_element(spec: TieredVmSpec, tier: Tier) -> ET.Element:
    mem = ET.Element("memory", {"model": "virtio-mem"})
    source = _sub(mem, "source")
    _sub(source, "nodemask", _nodeset(spec.host_nodes(tier)))
    target = _sub(mem, "target")
    _sub(target, "size", _kib(spec.max_bytes(tier)), unit="KiB")
    _sub(target, "node", str(GUEST_NODES[tier]))
    _sub(target, "block", _kib(spec.block_bytes), unit="KiB")
    _sub(target, "requested", _kib(spec.requested_bytes(tier)), unit="KiB")
    _sub(mem, "alias", name=ALIASES[tier])
    return mem


def _channel_element(path: str) -> ET.Element:
    chan = ET.Element("channel", {"type": "unix"})
    _sub(chan, "source", mode="bind", path=path)
    _sub(chan, "target", type="virtio", name=CHANNEL_NAME)
    return chan


def _notes(spec: TieredVmSpec) -> tuple[str, ...]:
    notes: list[str] = []
    if spec.slow_tier_emulated:
        notes.append(
            "slow tier is emulated: host node(s) "
            f"{_nodeset(spec.host_slow_nodes)} back both guest nodes, "
            "so guest node 1 has fast-memory latency"
        )
    return tuple(notes)


def _set_numa(domain: ET.Element, spec: TieredVmSpec, vcpus: int) -> None:
    """Replace <cpu><numa>, <numatune>, <memory>, <currentMemory>, <maxMemory>."""
    cpu = domain.find("cpu")
    if cpu is None:
        cpu = _sub(domain, "cpu")
    old = cpu.find("numa")
    if old is not None:
        cpu.remove(old)
    numa = _sub(cpu, "numa")
    cpus = "0" if vcpus == 1 else f"0-{vcpus - 1}"
    _sub(numa, "cell", id="0", cpus=cpus, memory=_kib(spec.fast_boot_bytes), unit="KiB")
    # No cpus attribute: guest node 1 is CPU-less, like a CXL.mem expander.
    _sub(numa, "cell", id="1", memory=_kib(spec.slow_boot_bytes), unit="KiB")

    tune = domain.find("numatune")
    if tune is None:
        tune = _sub(domain, "numatune")
    for memnode in tune.findall("memnode"):
        tune.remove(memnode)
    for tier in Tier:
        _sub(
            tune,
            "memnode",
            cellid=str(GUEST_NODES[tier]),
            mode="strict",
            nodeset=_nodeset(spec.host_nodes(tier)),
        )

    boot = spec.fast_boot_bytes + spec.slow_boot_bytes
    total = boot + spec.fast_max_bytes + spec.slow_max_bytes
    for tag, value in (("memory", total), ("currentMemory", boot)):
        elem = domain.find(tag)
        if elem is None:
            elem = ET.Element(tag)
            domain.insert(_insert_index(domain, tag), elem)
        elem.attrib = {"unit": "KiB"}
        elem.text = _kib(value)
    max_mem = domain.find("maxMemory")
    if max_mem is None:
        max_mem = ET.Element("maxMemory")
        domain.insert(_insert_index(domain, "memory"), max_mem)
    max_mem.attrib = {"slots": str(_MAX_MEMORY_SLOTS), "unit": "KiB"}
    max_mem.text = _kib(total)


def _insert_index(domain: ET.Element, before_tag: str) -> int:
    """Index of ``before_tag`` (or after <uuid>/<name>) for a tidy element order."""
    children = list(domain)
    for i, child in enumerate(children):
        if child.tag == before_tag:
            return i
    for i, child in enumerate(children):
        if child.tag not in (
            "name",
            "uuid",
            "title",
            "description",
            "metadata",
            "maxMemory",
        ):
            return i
    return len(children)


def _set_devices(domain: ET.Element, spec: TieredVmSpec) -> None:
    devices = domain.find("devices")
    if devices is None:
        devices = _sub(domain, "devices")
    for mem in devices.findall("memory"):
        if mem.get("model") == "virtio-mem":
            alias = mem.find("alias")
            if alias is not None and alias.get("name") in ALIASES.values():
                devices.remove(mem)
            else:
                raise BackendError(
                    "domain already has a virtio-mem device not made by HyperTier; "
                    "remove it before tiering the domain"
                )
    for chan in devices.findall("channel"):
        target = chan.find("target")
        if target is not None and target.get("name") == CHANNEL_NAME:
            devices.remove(chan)
    for tier in Tier:
        devices.append(_virtio_mem_element(spec, tier))
    devices.append(_channel_element(spec.channel_path))


def _set_metadata(domain: ET.Element, spec: TieredVmSpec) -> None:
    metadata = domain.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        domain.insert(_insert_index(domain, "maxMemory"), metadata)
    for old in metadata.findall("{" + METADATA_NS + "}tiering"):
        metadata.remove(old)
    metadata.append(metadata_element(spec.metadata()))


def _to_string(domain: ET.Element, notes: tuple[str, ...]) -> str:
    domain = copy.deepcopy(domain)
    for note in reversed(notes):
        domain.insert(0, ET.Comment(" hypertier: " + note.replace("--", "- -") + " "))
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode") + "\n"


def new_domain_xml(spec: TieredVmSpec) -> TieredDomainXml:
    """Domain XML for a new tiered VM (define it with ``virDomainDefineXML``).

    The VM gets one virtio disk (``spec.disk_path``), a serial console (to
    ``spec.console_log_path`` if given, else a pty), the HyperTier channel, both
    virtio-mem allotments and the metadata. No network interface: add one with
    :func:`convert_domain_xml` on a domain that has it, or edit the result.
    """
    domain = ET.Element("domain", {"type": spec.domain_type})
    _sub(domain, "name", spec.name)
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")
    os_elem = _sub(domain, "os")
    _sub(os_elem, "type", "hvm", arch="x86_64", machine="q35")
    if spec.kernel:
        _sub(os_elem, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_elem, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_elem, "cmdline", spec.cmdline)
    else:
        _sub(os_elem, "boot", dev="hd")
    features = _sub(domain, "features")
    _sub(features, "acpi")  # guest NUMA (SRAT) and memory hotplug need ACPI
    _sub(features, "apic")
    if spec.domain_type == "kvm":
        _sub(domain, "cpu", mode="host-passthrough", check="none", migratable="on")
    else:
        # TCG: a named model; host-passthrough needs KVM.
        cpu = _sub(domain, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", "qemu64", fallback="forbid")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    _sub(devices, "emulator", spec.emulator)
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=spec.disk_format, cache="none")
    _sub(disk, "source", file=spec.disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec.console_log_path:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=spec.console_log_path)
    else:
        serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    _sub(devices, "memballoon", model="none")  # tiers are sized by virtio-mem only
    _set_numa(domain, spec, spec.vcpus)
    _set_devices(domain, spec)
    _set_metadata(domain, spec)
    notes = _notes(spec)
    return TieredDomainXml(_to_string(domain, notes), notes)


def convert_domain_xml(xml: str, spec: TieredVmSpec) -> TieredDomainXml:
    """Turn an existing domain XML into a tiered one, keeping everything else.

    Uses only the tier fields of ``spec`` (sizes, block, host nodes, boot memory),
    ``channel_path`` and ``qos_class``; name, vCPUs, disks, boot and devices come
    from ``xml``. Existing guest NUMA cells and ``<memnode>`` entries are replaced
    (all vCPUs go to node 0); a ``<numatune><memory>`` element is kept. The domain
    must be redefined and restarted for the new topology to apply.

    Raises:
        BackendError: ``xml`` is not a domain XML, its name differs from
            ``spec.name``, or it has a virtio-mem device HyperTier did not make.
    """
    domain = parse_domain(xml)
    name = domain.findtext("name")
    if name != spec.name:
        raise BackendError(f"domain XML is for {name!r}, spec is for {spec.name!r}")
    vcpus = int(domain.findtext("vcpu") or "1")
    if spec.domain_type == "qemu" and domain.get("type") == "kvm":
        domain.set("type", "qemu")
    _set_numa(domain, spec, vcpus)
    _set_devices(domain, spec)
    _set_metadata(domain, spec)
    notes = _notes(spec)
    return TieredDomainXml(_to_string(domain, notes), notes)
