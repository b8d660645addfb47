"""libvirt domain XML for tiered VMs: write, convert, resize and parse (pure functions).

Writes the `domain XML <https://libvirt.org/formatdomain.html>`_ of a VM whose guest
NUMA node 0 is the fast tier (all vCPUs) and node 1 a CPU-less slow tier, each with
one resizable ``<memory model='virtio-mem'>`` device. No libvirt import: the host
backend passes the strings to ``virDomainDefineXML`` / ``virDomainUpdateDeviceFlags``.

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
(:func:`resize_device_xml`); the guest's virtio-mem driver then (un)plugs blocks and
libvirt reports the progress as ``<current>`` (:func:`parse_allotments`).
"""

from __future__ import annotations

import copy
import decimal
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from agent_host.backend import Allotment, Tier
from agent_host.errors import BackendError, ConfigError
from hypertier_common.cpulist import parse_cpulist

__all__ = [
    "ALIASES",
    "CHANNEL_NAME",
    "DEFAULT_BLOCK_BYTES",
    "METADATA_NS",
    "METADATA_PREFIX",
    "TierMetadata",
    "TieredDomainXml",
    "TieredVmSpec",
    "TieringMetadata",
    "convert_domain_xml",
    "new_domain_xml",
    "parse_allotments",
    "parse_metadata",
    "resize_device_xml",
]

MiB = 1 << 20
KiB = 1 << 10
DEFAULT_BLOCK_BYTES = 2 * MiB
METADATA_NS = "https://hypertier.dev/xmlns/domain/1"
METADATA_PREFIX = "hypertier"
CHANNEL_NAME = "org.hypertier.0"
# libvirt 9.0 rejects user-chosen device aliases unless they start with "ua-".
ALIASES: dict[Tier, str] = {
    Tier.FAST: "ua-hypertier-fast",
    Tier.SLOW: "ua-hypertier-slow",
}
GUEST_NODES: dict[Tier, int] = {Tier.FAST: 0, Tier.SLOW: 1}
# virtio-mem devices take no DIMM slot, but libvirt 9.0 refuses any memory device
# without <maxMemory slots='...'>; keep a few slots free for DIMMs added later.
_MAX_MEMORY_SLOTS = 16
_UNIT_BYTES = {
    "b": 1, "bytes": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}  # fmt: skip
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def _nodeset(nodes: Sequence[int]) -> str:
    return ",".join(str(n) for n in sorted(set(nodes)))


def _tuple_of_ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class TieredVmSpec:
    """Everything needed to write (or convert to) a tiered domain.

    Sizes are bytes. ``fast_bytes``/``slow_bytes`` are the initial *requested* size
    of each tier's virtio-mem allotment (the reservation), ``fast_max_bytes``/
    ``slow_max_bytes`` its ceiling (the device's ``<size>``, the limit). On top of
    the allotment each guest node has fixed boot memory (``fast_boot_bytes``,
    ``slow_boot_bytes``) that the kernel can use before the virtio-mem driver loads;
    so guest node 0 holds ``fast_boot_bytes + requested`` once plugged.

    ``host_fast_nodes``/``host_slow_nodes`` are host NUMA node ids (lists are
    accepted and stored as tuples). If the host has one node only, pass it for both:
    the slow tier is then emulated (same memory, separate guest node) and
    :attr:`TieredDomainXml.notes` says so.

    ``kernel``/``initrd``/``cmdline`` select direct kernel boot; otherwise the disk
    boots. ``domain_type`` is ``"kvm"`` (hardware) or ``"qemu"`` (TCG emulation).
    """

    name: str
    vcpus: int
    fast_bytes: int
    slow_bytes: int
    fast_max_bytes: int
    slow_max_bytes: int
    host_fast_nodes: Sequence[int]  # stored as a tuple
    host_slow_nodes: Sequence[int]
    disk_path: str
    channel_path: str
    qos_class: str = "standard"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    fast_boot_bytes: int = 256 * MiB
    slow_boot_bytes: int = 128 * MiB
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    domain_type: Literal["kvm", "qemu"] = "kvm"
    emulator: str = "/usr/bin/qemu-system-x86_64"
    disk_format: str = "qcow2"
    console_log_path: str | None = None

    def __post_init__(self) -> None:
        # Accept lists for the node sets but store tuples: the spec stays hashable.
        object.__setattr__(
            self, "host_fast_nodes", _tuple_of_ints(self.host_fast_nodes)
        )
        object.__setattr__(
            self, "host_slow_nodes", _tuple_of_ints(self.host_slow_nodes)
        )
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"vm name {self.name!r} is not a valid domain name")
        if self.vcpus <= 0:
            raise ConfigError(f"vcpus must be > 0, got {self.vcpus}")
        if self.domain_type not in ("kvm", "qemu"):
            raise ConfigError(
                f"domain_type must be 'kvm' or 'qemu', got {self.domain_type!r}"
            )
        _check_block(self.block_bytes)
        for tier in Tier:
            _check_tier_sizes(
                tier,
                requested_bytes=self.requested_bytes(tier),
                max_bytes=self.max_bytes(tier),
                block_bytes=self.block_bytes,
            )
            boot = self.boot_bytes(tier)
            if boot <= 0 or boot % MiB:
                raise ConfigError(
                    f"{tier.value}_boot_bytes must be a positive multiple of 1 MiB, "
                    f"got {boot}"
                )
            nodes = self.host_nodes(tier)
            if not nodes or any(n < 0 for n in nodes):
                raise ConfigError(
                    f"host_{tier.value}_nodes must list host NUMA node ids >= 0, "
                    f"got {nodes}"
                )
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ConfigError("initrd and cmdline need kernel (direct kernel boot)")

    def requested_bytes(self, tier: Tier) -> int:
        return self.fast_bytes if tier is Tier.FAST else self.slow_bytes

    def max_bytes(self, tier: Tier) -> int:
        return self.fast_max_bytes if tier is Tier.FAST else self.slow_max_bytes

    def boot_bytes(self, tier: Tier) -> int:
        return self.fast_boot_bytes if tier is Tier.FAST else self.slow_boot_bytes

    def host_nodes(self, tier: Tier) -> tuple[int, ...]:
        return tuple(
            self.host_fast_nodes if tier is Tier.FAST else self.host_slow_nodes
        )

    @property
    def slow_tier_emulated(self) -> bool:
        """True when both tiers are bound to the same host memory."""
        return set(self.host_fast_nodes) == set(self.host_slow_nodes)


@dataclass(frozen=True)
class TieredDomainXml:
    """The result of :func:`new_domain_xml` / :func:`convert_domain_xml`.

    ``xml`` is the domain XML for ``virDomainDefineXML``; ``notes`` are facts the
    caller should log once (for example that the slow tier is emulated).
    """

    xml: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class TierMetadata:
    """One tier's entry in the HyperTier metadata: reservation, limit, host nodes."""

    tier: Tier
    reservation_bytes: int
    limit_bytes: int
    host_nodes: tuple[int, ...]
    emulated: bool = False


@dataclass(frozen=True)
class TieringMetadata:
    """HyperTier's ``<metadata>`` element of a domain (survives daemon restarts)."""

    qos_class: str
    tiers: tuple[TierMetadata, ...]

    def tier(self, tier: Tier) -> TierMetadata | None:
        return next((t for t in self.tiers if t.tier is tier), None)


def _check_block(block_bytes: int) -> None:
    # virtio-mem needs a power-of-two block of at least the THP size (2 MiB on x86).
    if block_bytes < DEFAULT_BLOCK_BYTES or block_bytes & (block_bytes - 1):
        raise ConfigError(
            f"virtio-mem block_bytes must be a power of two >= 2 MiB, got {block_bytes}"
        )


def _check_tier_sizes(
    tier: Tier, requested_bytes: int, max_bytes: int, block_bytes: int
) -> None:
    if max_bytes <= 0 or max_bytes % block_bytes:
        raise ConfigError(
            f"{tier.value}_max_bytes must be a positive multiple of the block size "
            f"{block_bytes}, got {max_bytes}"
        )
    if (
        requested_bytes < 0
        or requested_bytes % block_bytes
        or requested_bytes > max_bytes
    ):
        raise ConfigError(
            f"{tier.value} requested size {requested_bytes} must be a multiple of "
            f"{block_bytes} between 0 and {max_bytes}"
        )


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


def _metadata_element(spec: TieredVmSpec) -> ET.Element:
    ns = "{" + METADATA_NS + "}"
    root = ET.Element(ns + "tiering")
    _sub(root, ns + "class", spec.qos_class)
    for tier in Tier:
        attrib = {
            "name": tier.value,
            "reservation_bytes": str(spec.requested_bytes(tier)),
            "limit_bytes": str(spec.max_bytes(tier)),
            "host_nodes": _nodeset(spec.host_nodes(tier)),
        }
        if tier is Tier.SLOW and spec.slow_tier_emulated:
            attrib["emulated"] = "yes"
        _sub(root, ns + "tier", **attrib)
    return root


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
    metadata.append(_metadata_element(spec))


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
    domain = _parse_domain(xml)
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


def _parse_domain(xml: str) -> ET.Element:
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


def _parse_nodeset(text: str | None) -> tuple[int, ...]:
    return parse_cpulist(text or "")


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
    domain = _parse_domain(xml)
    memnodes = {
        int(m.get("cellid", "-1")): _parse_nodeset(m.get("nodeset"))
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
        host_nodes = _parse_nodeset(nodemask) if nodemask else memnodes.get(node, ())
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
    domain = _parse_domain(xml)
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
        _check_tier_sizes(tier, requested_bytes, size, block)
        dev = copy.deepcopy(mem)
        dev_target = dev.find("target")
        assert dev_target is not None  # copied from target above
        current = dev_target.find("current")
        if current is not None:
            dev_target.remove(current)
        requested = dev_target.find("requested")
        if requested is None:
            requested = _sub(dev_target, "requested")
        requested.attrib = {"unit": "KiB"}
        requested.text = _kib(requested_bytes)
        ET.indent(dev, space="  ")
        return ET.tostring(dev, encoding="unicode")
    raise BackendError(f"domain has no virtio-mem allotment for tier {tier.value}")


def _parse_bytes(tier: str, attr: str, text: str) -> int:
    # Versions before the vm_set type check stored JSON floats as str(float)
    # ("25165824.0"); an integral value in any numeric spelling is read as that
    # int so those VMs stay adoptable, and the next metadata write is canonical.
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    # adjusted() is the decimal exponent: 10**30 bytes is far beyond any memory
    # and keeps int() of a crafted "1e999999999" from building a huge number.
    if (
        not value.is_finite()
        or value.adjusted() > 30
        or value != value.to_integral_value()
    ):
        raise BackendError(
            f"malformed HyperTier tier metadata: {tier} {attr} must be a whole "
            f"number of bytes, got {text!r}"
        )
    return int(value)


def parse_metadata(xml: str) -> TieringMetadata | None:
    """HyperTier's metadata from a domain XML (or the bare element), or None.

    Accepts a whole domain XML or the ``<hypertier:tiering>`` element alone (what
    ``virDomainGetMetadata`` returns). Sizes are decimal integers; an integral
    value written as a float (``"25165824.0"``, as older versions stored a float
    limit) is accepted as that integer, a fractional one is malformed.

    Raises:
        BackendError: the XML does not parse or a number is malformed.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise BackendError(f"metadata XML does not parse: {err}") from err
    ns = "{" + METADATA_NS + "}"
    elem = root if root.tag == ns + "tiering" else root.find(f"metadata/{ns}tiering")
    if elem is None:
        return None
    tiers: list[TierMetadata] = []
    for t in elem.findall(ns + "tier"):
        try:
            tier = Tier(t.get("name", ""))
            tiers.append(
                TierMetadata(
                    tier=tier,
                    reservation_bytes=_parse_bytes(
                        tier.value,
                        "reservation_bytes",
                        t.get("reservation_bytes", "0"),
                    ),
                    limit_bytes=_parse_bytes(
                        tier.value, "limit_bytes", t.get("limit_bytes", "0")
                    ),
                    host_nodes=_parse_nodeset(t.get("host_nodes")),
                    emulated=t.get("emulated") == "yes",
                )
            )
        except ValueError as err:
            raise BackendError(f"malformed HyperTier tier metadata: {err}") from err
    return TieringMetadata(
        qos_class=elem.findtext(ns + "class") or "", tiers=tuple(tiers)
    )
