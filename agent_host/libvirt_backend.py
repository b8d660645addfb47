"""The real host backend: libvirt-python, the guest channel socket, and sysfs.

Wraps `libvirt's domain API <https://libvirt.org/html/libvirt-libvirt-domain.html>`_
(virtio-mem resize through ``virDomainUpdateDeviceFlags``, ``virDomainSetMetadata``,
``virConnectGetAllDomainStats``, lifecycle events); host NUMA nodes come from
:mod:`agent_host.linux_nodes`. The only module that imports libvirt, and only
when the libvirt backend is chosen (the registry imports it by name).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import libvirt

from agent_host.allotments import parse_allotments, resize_device_xml
from agent_host.backend import (
    DomainEvent,
    DomainInfo,
    DomainStats,
    EventKind,
    HostCapability,
    HostNode,
    Tier,
)
from agent_host.channel_sockets import ChannelSockets, channel_path
from agent_host.errors import HostError, NoSuchDomain
from agent_host.linux_nodes import read_host_nodes
from agent_host.metadata import METADATA_NS, METADATA_PREFIX
from hypertier_common.errors import AccessDenied, BackendError, Unsupported

__all__ = ["LibvirtHostBackend", "stats_from_record"]

log = logging.getLogger(__name__)

_MAX_EVENTS = 10000
_NS = "{" + METADATA_NS + "}"

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once.

    libvirt keeps one event implementation per process, so this guard is
    process-wide by necessity; it must run before the first ``virConnectOpen``
    for lifecycle events and keepalive to work.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr by default; we map and log them.
        libvirt.registerErrorHandler(_ignore_error, None)
        thread = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        thread.start()
        _event_loop_started = True


def _ignore_error(_ctx: object, _err: object) -> None:
    return None


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _map_error(err: libvirt.libvirtError, vm: str, what: str) -> HostError:
    """The HostError for a libvirtError, by its error code (not its text)."""
    code = err.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NoSuchDomain(vm)
    if code in (
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    ):
        return Unsupported(what, err.get_error_message() or str(err))
    if code in (
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_OPERATION_DENIED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    ):
        return AccessDenied(what, "run as root or in group libvirt")
    return BackendError(f"{what} failed for {vm or 'the connection'}: {err}")


_LIFECYCLE: dict[int, EventKind] = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: EventKind.STARTED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: EventKind.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_DEFINED: EventKind.DEFINED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: EventKind.UNDEFINED,
}

# Domain stats group for QEMU query-stats (KVM binary stats); libvirt 8.9.0.
_STATS_VM: int = getattr(libvirt, "VIR_DOMAIN_STATS_VM", 0)


class LibvirtHostBackend:
    """HostBackend over one libvirt connection (keepalive, reconnect, events).

    ``uri`` is the libvirt URI (``qemu:///system``; ``test:///default`` for
    tests). ``root`` is where sysfs is found (tests pass captured trees).
    """

    def __init__(
        self,
        uri: str = "qemu:///system",
        root: Path | str = Path("/"),
        fast_nodes: Sequence[int] = (),
        slow_nodes: Sequence[int] = (),
        max_read_bytes: int = 65536,
        keepalive_interval_s: int = 5,
        keepalive_count: int = 3,
    ) -> None:
        self._uri = uri
        self._root = Path(root)
        self._fast_nodes = tuple(fast_nodes)
        self._slow_nodes = tuple(slow_nodes)
        self._keepalive = (keepalive_interval_s, keepalive_count)
        self._lock = threading.Lock()
        self._events: collections.deque[DomainEvent] = collections.deque(
            maxlen=_MAX_EVENTS
        )
        self._sockets = ChannelSockets(self._channel_path, max_read_bytes)
        self._conn: Any = None
        self._callback_id: int | None = None
        self._closed_by_peer = False
        self.reconnects = 0
        # Set on every lifecycle event: lets callers wait instead of polling.
        self.event_arrived = threading.Event()
        _start_event_loop()
        self._connect()

    # -- connection ---------------------------------------------------------

    def _connect(self) -> Any:
        try:
            conn = libvirt.open(self._uri)
        except libvirt.libvirtError as err:
            raise _map_error(err, "", f"connecting to {self._uri}") from err
        try:
            conn.setKeepAlive(*self._keepalive)
        except libvirt.libvirtError as err:
            # Local drivers such as test:/// have no keepalive (VIR_ERR_NO_SUPPORT).
            log.debug("no keepalive on %s: %s", self._uri, err)
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError as err:
            log.debug("no close callback on %s: %s", self._uri, err)
        try:
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        except libvirt.libvirtError as err:
            log.warning("no lifecycle events from %s: %s", self._uri, err)
            self._callback_id = None
        self._conn = conn
        self._closed_by_peer = False
        return conn

    def _on_close(self, _conn: object, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection to %s closed (reason %d)", self._uri, reason)
        self._closed_by_peer = True

    def _on_lifecycle(
        self, _conn: object, dom: Any, event: int, detail: int, _opaque: object
    ) -> None:
        kind = _LIFECYCLE.get(event)
        if kind is None:
            return
        if (
            event == libvirt.VIR_DOMAIN_EVENT_STOPPED
            and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
        ):
            kind = EventKind.MIGRATED
        with self._lock:
            self._events.append(DomainEvent(dom.name(), kind))
        self.event_arrived.set()

    def _connection(self) -> Any:
        """The live connection, reopened if the peer closed it."""
        alive = False
        if self._conn is not None and not self._closed_by_peer:
            try:
                alive = self._conn.isAlive() == 1
            except libvirt.libvirtError:
                alive = False
        if not alive:
            if self._conn is not None:
                log.info("reconnecting to %s", self._uri)
                self.reconnects += 1
                self._drop_connection()
            self._connect()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
            conn.unregisterCloseCallback()
        except libvirt.libvirtError as err:
            log.debug("cleanup of old connection failed: %s", err)
        try:
            conn.close()
        except libvirt.libvirtError as err:
            log.debug("closing old connection failed: %s", err)

    def _domain(self, vm: str) -> Any:
        try:
            return self._connection().lookupByName(vm)
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, "domain lookup") from err

    # -- HostBackend --------------------------------------------------------

    def capabilities(self) -> frozenset[HostCapability]:
        caps = {
            HostCapability.METADATA,
            HostCapability.GUEST_CHANNEL,
            HostCapability.BALLOON,
        }
        if self._callback_id is not None:
            caps.add(HostCapability.EVENTS)
        # The test driver has no virDomainUpdateDeviceFlags and no query-stats.
        if not self._uri.startswith("test:"):
            caps.add(HostCapability.VIRTIO_MEM_RESIZE)
            if _STATS_VM:
                caps.add(HostCapability.KVM_STATS)
        return frozenset(caps)

    def host_nodes(self) -> Sequence[HostNode]:
        return read_host_nodes(self._root, self._fast_nodes, self._slow_nodes)

    def domains(self) -> Sequence[DomainInfo]:
        try:
            doms = self._connection().listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            )
        except libvirt.libvirtError as err:
            raise _map_error(err, "", "listing domains") from err
        out: list[DomainInfo] = []
        for dom in doms:
            try:
                name = dom.name()
                xml = dom.XMLDesc(0)
                info = dom.info()
                uuid = dom.UUIDString()
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # stopped between list and lookup
                raise _map_error(err, "", "reading a domain") from err
            allotted = parse_allotments(xml)
            if allotted:
                out.append(DomainInfo(name, uuid, int(info[3]), True, allotted))
        return out

    def resize(self, vm: str, tier: Tier, size_bytes: int) -> None:
        dom = self._domain(vm)
        try:
            xml = dom.XMLDesc(0)
            dev = resize_device_xml(xml, tier, size_bytes)
            dom.updateDeviceFlags(dev, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, f"resizing the {tier.value} tier") from err

    def domain_stats(self, vm: str) -> DomainStats:
        dom = self._domain(vm)
        groups = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
        if HostCapability.KVM_STATS in self.capabilities():
            # vm.* and the per-vCPU query-stats counters (vcpu.N.exits, ...).
            groups |= _STATS_VM | libvirt.VIR_DOMAIN_STATS_VCPU
        try:
            records = self._connection().domainListGetStats([dom], groups, 0)
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, "reading domain stats") from err
        stats: dict[str, Any] = records[0][1] if records else {}
        return stats_from_record(vm, stats)

    def get_metadata(self, vm: str) -> str | None:
        dom = self._domain(vm)
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise _map_error(err, vm, "reading metadata") from err
        return _qualify(raw)

    def set_metadata(self, vm: str, xml: str) -> None:
        dom = self._domain(vm)
        try:
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0
            if dom.isPersistent():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                _unqualify(xml),
                METADATA_PREFIX,
                METADATA_NS,
                flags,
            )
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, "writing metadata") from err

    def channel_send(self, vm: str, line: bytes) -> None:
        self._sockets.send(vm, line)

    def channel_connection(self, vm: str) -> int:
        return self._sockets.connection(vm)

    def channel_recv(self, vm: str) -> bytes:
        return self._sockets.recv(vm)

    def events(self) -> Sequence[DomainEvent]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    def close(self) -> None:
        self._sockets.close()
        self._drop_connection()

    def _channel_path(self, vm: str) -> str | None:
        return channel_path(self.domain_xml(vm))

    # -- libvirt-only helpers (used by ``vm define`` and the tests) ----------

    def define_xml(self, xml: str) -> str:
        """Define (or redefine) a persistent domain; returns its name."""
        try:
            dom = self._connection().defineXML(xml)
        except libvirt.libvirtError as err:
            raise _map_error(err, "", "defining a domain") from err
        name: str = dom.name()
        return name

    def domain_xml(self, vm: str, inactive: bool = False) -> str:
        """The domain XML (the persistent definition if ``inactive``)."""
        dom = self._domain(vm)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        try:
            xml: str = dom.XMLDesc(flags)
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, "reading the domain XML") from err
        return xml

    def start(self, vm: str) -> None:
        try:
            self._domain(vm).create()
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, "starting the domain") from err

    def destroy_and_undefine(self, vm: str) -> None:
        """Stop (if running) and undefine ``vm``; for tests and conversions."""
        dom = self._domain(vm)
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as err:
            raise _map_error(err, vm, "removing the domain") from err


def _sum(stats: dict[str, Any], pattern: re.Pattern[str]) -> int | None:
    values = [int(v) for k, v in stats.items() if pattern.fullmatch(k)]
    return sum(values) if values else None


_REMOTE_TLB_RE = re.compile(r"vm\.remote_tlb_flush\.(sum|cur)")
_TLB_RE = re.compile(r"vcpu\.\d+\.tlb_flush\.(sum|cur)")
_EXITS_RE = re.compile(r"vcpu\.\d+\.exits\.(sum|cur)")


def stats_from_record(vm: str, stats: dict[str, Any]) -> DomainStats:
    """DomainStats from one ``virConnectGetAllDomainStats`` record.

    KVM statistics come from QEMU's query-stats as ``vm.<name>.<type>`` and
    ``vcpu.<n>.<name>.<type>`` (libvirt 8.9.0); absent keys stay None.
    """
    cpu_ns = stats.get("cpu.time")
    balloon_kib = stats.get("balloon.current")
    return DomainStats(
        vm=vm,
        remote_tlb_flush=_sum(stats, _REMOTE_TLB_RE),
        tlb_flush=_sum(stats, _TLB_RE),
        exits=_sum(stats, _EXITS_RE),
        cpu_time_s=int(cpu_ns) / 1e9 if cpu_ns is not None else None,
        balloon_current_bytes=int(balloon_kib) * 1024
        if balloon_kib is not None
        else None,
    )


def _retag(elem: ET.Element, fn: Callable[[str], str]) -> None:
    for e in elem.iter():
        if isinstance(e.tag, str):
            e.tag = fn(e.tag)


def _qualify(raw: str) -> str:
    """libvirt returns our metadata element without its namespace; restore it."""
    elem = ET.fromstring(raw)
    _retag(elem, lambda t: t if t.startswith("{") else _NS + t)
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    return ET.tostring(elem, encoding="unicode")


def _unqualify(xml: str) -> str:
    """setMetadata applies the namespace itself; pass it plain tags."""
    try:
        elem = ET.fromstring(xml)
    except ET.ParseError as err:
        raise BackendError(f"metadata XML does not parse: {err}") from err
    _retag(elem, lambda t: t.removeprefix(_NS))
    return ET.tostring(elem, encoding="unicode")
