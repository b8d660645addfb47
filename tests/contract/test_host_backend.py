"""One contract for every HostBackend: emu, libvirt's test driver, real QEMU.

``libvirt-test`` uses libvirt's built-in ``test:///default`` driver (no root, no
daemon); ``libvirt-qemu`` (marked integration) defines and starts a diskless TCG
domain on ``qemu:///system``. Without a guest virtio_mem driver a real domain's
``<current>`` stays 0, so only the request side of a live resize is checked there.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from agent_host import domxml
from agent_host.backend import (
    EventKind,
    HostBackend,
    HostCapability,
    Tier,
)
from agent_host.errors import HostError, NoSuchDomain
from agent_host.metadata import (
    TieringMetadata,
    TierMetadata,
    metadata_xml,
    parse_metadata,
)
from agent_host.vmspec import TieredVmSpec
from emu.backends.host import EmuHostBackend
from emu.machine import World
from hypertier_common.errors import BackendError
from tests import DATA
from tests.needs import requires_libvirt

MiB = 1 << 20
INITIAL = 128 * MiB
MAXIMUM = 512 * MiB
EVENT_WAIT_S = 10.0


class Harness(Protocol):
    backend: HostBackend

    def add_vm(self) -> str: ...
    def guest_write(self, vm: str, data: bytes) -> None: ...
    def guest_read(self, vm: str) -> bytes: ...
    def wait_event(self, vm: str, kind: EventKind) -> bool: ...
    def close(self) -> None: ...


class EmuHarness:
    def __init__(self) -> None:
        self.world = World(host_fast_bytes=4096 * MiB, host_slow_bytes=8192 * MiB)
        self.backend: HostBackend = EmuHostBackend(self.world)

    def add_vm(self) -> str:
        name = f"ht-ct-{uuid.uuid4().hex[:6]}"
        self.world.add_vm(name, 1, INITIAL, INITIAL, MAXIMUM, MAXIMUM)
        return name

    def guest_write(self, vm: str, data: bytes) -> None:
        self.world.vm(vm).to_host += data

    def guest_read(self, vm: str) -> bytes:
        return bytes(self.world.vm(vm).to_guest)

    def wait_event(self, vm: str, kind: EventKind) -> bool:
        return any(e.vm == vm and e.kind is kind for e in self.backend.events())

    def close(self) -> None:
        self.backend.close()


class LibvirtHarness:
    """Tiered domains on a libvirt URI; the test plays QEMU's side of the channel
    on the test driver (which runs no QEMU)."""

    def __init__(self, uri: str) -> None:
        from agent_host.libvirt_backend import LibvirtHostBackend

        self.uri = uri
        self.dir = Path(tempfile.mkdtemp(prefix="htct", dir="/tmp"))
        self.backend_lv = LibvirtHostBackend(uri, root=DATA / "host-sysfs-1node")
        self.backend: HostBackend = self.backend_lv
        self.vms: list[str] = []
        self._listeners: dict[str, socket.socket] = {}
        self._peers: dict[str, socket.socket] = {}
        self._seen: list[tuple[str, EventKind]] = []

    def add_vm(self) -> str:
        name = f"ht-ct-{uuid.uuid4().hex[:6]}"
        chan = str(self.dir / f"{name}.sock")
        disk = self.dir / f"{name}.qcow2"
        if self.uri.startswith("test:"):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(chan)
            listener.listen(1)
            self._listeners[name] = listener
        else:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"],
                check=True,
            )
            self.dir.chmod(0o755)
        spec = TieredVmSpec(
            name=name,
            vcpus=1,
            fast_bytes=INITIAL,
            slow_bytes=INITIAL,
            fast_max_bytes=MAXIMUM,
            slow_max_bytes=MAXIMUM,
            host_fast_nodes=(0,),
            host_slow_nodes=(0,),
            disk_path=str(disk),
            channel_path=chan,
            domain_type="qemu",
            fast_boot_bytes=128 * MiB,
            slow_boot_bytes=64 * MiB,
        )
        self.backend_lv.define_xml(domxml.new_domain_xml(spec).xml)
        self.vms.append(name)
        self.backend_lv.start(name)
        return name

    def _peer(self, vm: str) -> socket.socket:
        if vm not in self._listeners:
            pytest.skip(
                "a real domain's channel needs a guest agent inside it; "
                "tests/integration/vm covers that end to end"
            )
        if vm not in self._peers:
            conn, _ = self._listeners[vm].accept()
            conn.settimeout(EVENT_WAIT_S)
            self._peers[vm] = conn
        return self._peers[vm]

    def guest_write(self, vm: str, data: bytes) -> None:
        self._peer(vm).sendall(data)

    def guest_read(self, vm: str) -> bytes:
        return self._peer(vm).recv(65536)

    def wait_event(self, vm: str, kind: EventKind) -> bool:
        """Wait (on the backend's event flag, bounded) for ``kind`` of ``vm``."""
        while True:
            self.backend_lv.event_arrived.clear()
            self._seen += [(e.vm, e.kind) for e in self.backend.events()]
            if (vm, kind) in self._seen:
                return True
            if not self.backend_lv.event_arrived.wait(EVENT_WAIT_S):
                return False

    def close(self) -> None:
        for sock in [*self._peers.values(), *self._listeners.values()]:
            sock.close()
        for vm in self.vms:
            try:
                self.backend_lv.destroy_and_undefine(vm)
            except HostError as err:
                print(f"cleanup of {vm} failed: {err}", file=sys.stderr)
        self.backend.close()


def _qemu_harness() -> LibvirtHarness:
    from tests.integration.vm.libvirtd import ensure_libvirtd

    try:
        ensure_libvirtd()
    except RuntimeError as err:
        pytest.skip(f"qemu:///system unavailable: {err}")
    return LibvirtHarness("qemu:///system")


@pytest.fixture(
    params=[
        "emu",
        pytest.param("libvirt-test", marks=requires_libvirt),
        pytest.param("libvirt-qemu", marks=[pytest.mark.integration, requires_libvirt]),
    ]
)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h: Harness
    if request.param == "emu":
        h = EmuHarness()
    elif request.param == "libvirt-test":
        h = LibvirtHarness("test:///default")
    else:
        h = _qemu_harness()
    yield h
    h.close()


def test_backend_satisfies_protocol(harness: Harness) -> None:
    backend: HostBackend = harness.backend  # checked by mypy as well
    assert isinstance(backend, HostBackend)


def test_capabilities_are_host_capabilities(harness: Harness) -> None:
    caps = harness.backend.capabilities()
    assert isinstance(caps, frozenset)
    assert all(isinstance(c, HostCapability) for c in caps)
    assert HostCapability.METADATA in caps


def test_host_nodes_include_a_fast_node(harness: Harness) -> None:
    nodes = harness.backend.host_nodes()
    assert any(n.tier is Tier.FAST and n.total_bytes > 0 for n in nodes)


def test_tiered_vm_is_listed_with_both_allotments(harness: Harness) -> None:
    vm = harness.add_vm()
    info = next(d for d in harness.backend.domains() if d.vm == vm)
    fast, slow = info.allotment(Tier.FAST), info.allotment(Tier.SLOW)
    assert fast is not None
    assert slow is not None
    assert (fast.guest_node, slow.guest_node) == (0, 1)
    assert (fast.requested_bytes, fast.max_bytes) == (INITIAL, MAXIMUM)
    assert fast.requested_bytes % fast.block_bytes == 0


def test_metadata_round_trips(harness: Harness) -> None:
    vm = harness.add_vm()
    meta = TieringMetadata(
        "gold",
        (
            TierMetadata(Tier.FAST, INITIAL, MAXIMUM, (0,)),
            TierMetadata(Tier.SLOW, 64 * MiB, 256 * MiB, (1,), emulated=True),
        ),
    )
    harness.backend.set_metadata(vm, metadata_xml(meta))
    raw = harness.backend.get_metadata(vm)
    assert raw is not None
    assert parse_metadata(raw) == meta


def test_metadata_of_unknown_vm_raises_no_such_domain(harness: Harness) -> None:
    with pytest.raises(NoSuchDomain):
        harness.backend.get_metadata("ht-no-such-vm")


def test_resize_of_unknown_vm_raises_no_such_domain(harness: Harness) -> None:
    with pytest.raises(NoSuchDomain):
        harness.backend.resize("ht-no-such-vm", Tier.FAST, INITIAL)


def test_resize_updates_request_where_supported(harness: Harness) -> None:
    vm = harness.add_vm()
    if HostCapability.VIRTIO_MEM_RESIZE not in harness.backend.capabilities():
        with pytest.raises(HostError):
            harness.backend.resize(vm, Tier.FAST, 2 * INITIAL)
        return
    harness.backend.resize(vm, Tier.FAST, 2 * INITIAL)
    info = next(d for d in harness.backend.domains() if d.vm == vm)
    fast = info.allotment(Tier.FAST)
    assert fast is not None
    assert fast.requested_bytes == 2 * INITIAL


def test_resize_above_device_size_is_refused(harness: Harness) -> None:
    vm = harness.add_vm()
    with pytest.raises(HostError):
        harness.backend.resize(vm, Tier.SLOW, 2 * MAXIMUM)


def test_domain_stats_name_the_vm(harness: Harness) -> None:
    vm = harness.add_vm()
    assert harness.backend.domain_stats(vm).vm == vm


def test_start_is_reported_as_event(harness: Harness) -> None:
    vm = harness.add_vm()
    assert harness.wait_event(vm, EventKind.STARTED)


def test_channel_carries_bytes_both_ways(harness: Harness) -> None:
    vm = harness.add_vm()
    assert harness.backend.channel_recv(vm) == b""
    harness.guest_write(vm, b'{"v":1}\n')
    assert harness.backend.channel_recv(vm) == b'{"v":1}\n'
    harness.backend.channel_send(vm, b'{"v":1,"type":"hello"}\n')
    assert harness.guest_read(vm) == b'{"v":1,"type":"hello"}\n'


def test_channel_connection_number_holds_while_connected(harness: Harness) -> None:
    vm = harness.add_vm()
    harness.backend.channel_recv(vm)
    first = harness.backend.channel_connection(vm)
    harness.guest_write(vm, b"\n")
    assert harness.backend.channel_recv(vm) == b"\n"
    assert harness.backend.channel_connection(vm) == first


@requires_libvirt
def test_channel_of_a_qemu_that_does_not_accept_fails_at_once() -> None:
    # QEMU stopped or hung with its channel's backlog full: connect(2) must not
    # block the host loop (only the watchdog would end that).
    h = LibvirtHarness("test:///default")
    try:
        vm = h.add_vm()
        listener = h._listeners[vm]
        path = listener.getsockname()
        queued = []
        while True:  # fill the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        start = time.monotonic()
        assert h.backend.channel_recv(vm) == b""  # nothing yet; retried next tick
        with pytest.raises(BackendError, match="not accepting"):
            h.backend.channel_send(vm, b"\n")
        assert time.monotonic() - start < 1.0
        for s in queued:
            s.close()
    finally:
        h.close()
