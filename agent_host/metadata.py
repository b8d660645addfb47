"""HyperTier's per-VM domain ``<metadata>`` element: class, reservations, limits.

The one writer (:func:`metadata_element`, :func:`metadata_xml`) and the one
reader (:func:`parse_metadata`) of the element in the namespace
``https://hypertier.dev/xmlns/domain/1`` (libvirt ``virDomainSetMetadata``,
https://libvirt.org/formatdomain.html#general-metadata).
"""

from __future__ import annotations

import decimal
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from agent_host.backend import DomainInfo, Tier
from hypertier_common.cpulist import parse_cpulist
from hypertier_common.errors import BackendError

__all__ = [
    "METADATA_NS",
    "METADATA_PREFIX",
    "TierMetadata",
    "TieringMetadata",
    "initial_metadata",
    "metadata_element",
    "metadata_xml",
    "parse_metadata",
    "tiered",
]

METADATA_NS = "https://hypertier.dev/xmlns/domain/1"
METADATA_PREFIX = "hypertier"
_NS = "{" + METADATA_NS + "}"


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


def metadata_element(meta: TieringMetadata) -> ET.Element:
    """The ``<hypertier:tiering>`` element for ``meta``."""
    root = ET.Element(_NS + "tiering")
    ET.SubElement(root, _NS + "class").text = meta.qos_class
    for t in meta.tiers:
        attrib = {
            "name": t.tier.value,
            "reservation_bytes": str(t.reservation_bytes),
            "limit_bytes": str(t.limit_bytes),
            "host_nodes": ",".join(str(n) for n in t.host_nodes),
        }
        if t.emulated:
            attrib["emulated"] = "yes"
        ET.SubElement(root, _NS + "tier", attrib)
    return root


def metadata_xml(meta: TieringMetadata) -> str:
    """The ``<hypertier:tiering>`` element for ``meta``, namespace declared."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    return ET.tostring(metadata_element(meta), encoding="unicode")


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
    ns = _NS
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
                    host_nodes=parse_cpulist(t.get("host_nodes") or ""),
                    emulated=t.get("emulated") == "yes",
                )
            )
        except ValueError as err:
            raise BackendError(f"malformed HyperTier tier metadata: {err}") from err
    return TieringMetadata(
        qos_class=elem.findtext(ns + "class") or "", tiers=tuple(tiers)
    )


def tiered(info: DomainInfo) -> bool:
    """A VM HyperTier manages: one allotment per tier."""
    a = info.allotments
    return len(a) == 2 and a[0].tier is not a[1].tier


def initial_metadata(
    info: DomainInfo, found: TieringMetadata | None, default_class: str
) -> TieringMetadata:
    """The metadata of a VM first seen without one for both tiers: its current
    allotments as reservations, its device sizes as limits, the class it had
    (or ``default_class``)."""
    tiers = []
    for tier in Tier:
        allot = info.allotment(tier)
        assert allot is not None  # a tiered() VM has both
        tiers.append(
            TierMetadata(tier, allot.requested_bytes, allot.max_bytes, allot.host_nodes)
        )
    qos = found.qos_class if found and found.qos_class else default_class
    return TieringMetadata(qos, tuple(tiers))
