"""The peer benchmark's VM: the end-to-end test VM with node 1 slower in the HMAT.

Same domain as tests/integration/vm (defined through ``agent_host.domxml``: node 0
with the vCPUs, node 1 CPU-less, one virtio-mem device per node), plus the ACPI HMAT
that tells the guest kernel node 1 is slower: libvirt ``<interconnects>`` under
``<cpu><numa>`` (libvirt >= 6.6 passes ``-machine hmat=on`` and ``-numa hmat-lb``).
A 6.12 guest then puts node 1 in a lower memory tier (memory_tiering/).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tests.integration.vm.machine import TestVm, VmShape

# Access latency (ns) and bandwidth (KiB/s) from initiator node 0 to nodes 0 and 1.
HMAT_LATENCY_NS = (100, 250)
HMAT_BANDWIDTH_KIB_S = (20971520, 5242880)


def peers_shape(name: str = "ht-peers") -> VmShape:
    """1 GiB guest: node 0 = 256 MiB boot + 128 MiB virtio-mem, node 1 = 128 + 512."""
    return VmShape(
        name=name,
        vcpus=2,
        fast_boot_mib=256,
        slow_boot_mib=128,
        fast_mib=128,
        slow_mib=512,
        fast_max_mib=512,
        slow_max_mib=1024,
    )


@dataclass(frozen=True)
class Hmat:
    latency_ns: tuple[int, int] = HMAT_LATENCY_NS
    bandwidth_kib_s: tuple[int, int] = HMAT_BANDWIDTH_KIB_S


def add_hmat(domain_xml: str, hmat: Hmat = Hmat()) -> str:
    """``domain_xml`` with ``<interconnects>`` for initiator 0 to targets 0 and 1."""
    domain = ET.fromstring(domain_xml)
    numa = domain.find("cpu/numa")
    if numa is None:
        raise ValueError("domain XML has no <cpu><numa>: not a tiered VM")
    old = numa.find("interconnects")
    if old is not None:
        numa.remove(old)
    inter = ET.SubElement(numa, "interconnects")
    entries: tuple[tuple[str, tuple[int, int], dict[str, str]], ...] = (
        ("latency", hmat.latency_ns, {}),
        ("bandwidth", hmat.bandwidth_kib_s, {"unit": "KiB"}),
    )
    for kind, values, unit in entries:
        for target, value in enumerate(values):
            ET.SubElement(
                inter,
                kind,
                initiator="0",
                target=str(target),
                type="access",
                value=str(value),
                **unit,
            )
    return ET.tostring(domain, encoding="unicode")


class PeersVm(TestVm):
    """A :class:`TestVm` whose domain carries the HMAT of :class:`Hmat`."""

    __test__ = False

    def domain_xml(self, root_disk: Path, payload: Path) -> str:
        return add_hmat(super().domain_xml(root_disk, payload))
