"""Write HyperTier's per-VM domain ``<metadata>`` element (class, reservations, limits).

The reader is :func:`agent_host.domxml.parse_metadata`; both use the namespace
``https://hypertier.dev/xmlns/domain/1`` (libvirt ``virDomainSetMetadata``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent_host.domxml import METADATA_NS, METADATA_PREFIX, TieringMetadata

__all__ = ["metadata_xml"]


def metadata_xml(meta: TieringMetadata) -> str:
    """The ``<hypertier:tiering>`` element for ``meta``, namespace declared."""
    ns = "{" + METADATA_NS + "}"
    root = ET.Element(ns + "tiering")
    ET.SubElement(root, ns + "class").text = meta.qos_class
    for t in meta.tiers:
        attrib = {
            "name": t.tier.value,
            "reservation_bytes": str(t.reservation_bytes),
            "limit_bytes": str(t.limit_bytes),
            "host_nodes": ",".join(str(n) for n in t.host_nodes),
        }
        if t.emulated:
            attrib["emulated"] = "yes"
        ET.SubElement(root, ns + "tier", attrib)
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    return ET.tostring(root, encoding="unicode")
