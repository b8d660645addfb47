"""The libvirt backend against a real ``qemu:///system`` (libvirt 9.0, QEMU 7.2, TCG).

What runs here: defining a new and a converted tiered domain, the metadata round
trip across connections (a daemon restart), starting the domain, a live virtio-mem
resize *request* (``<requested>`` changes in QEMU), domain stats, a daemon tick
and reconnecting after the connection dies. What cannot: ``<current>`` following
the request needs a guest kernel with the virtio_mem driver (the domains here boot
no OS; tests/integration/vm boots one), and KVM statistics (query-stats) need
``type='kvm'``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from agent_host import cli, config, domxml
from agent_host.allotments import parse_allotments
from agent_host.backend import DomainInfo, HostCapability, Tier
from agent_host.daemon import Daemon
from agent_host.errors import HostError
from agent_host.libvirt_backend import LibvirtHostBackend
from agent_host.metadata import (
    TieringMetadata,
    TierMetadata,
    metadata_xml,
    parse_metadata,
)
from agent_host.vmspec import TieredVmSpec
from emu.clock import FakeClock
from tests.integration.vm.libvirtd import ensure_libvirtd

pytestmark = pytest.mark.integration

MiB = 1 << 20
URI = "qemu:///system"


@pytest.fixture(scope="module")
def libvirtd() -> str:
    try:
        return ensure_libvirtd().version
    except RuntimeError as err:
        pytest.skip(f"qemu:///system unavailable: {err}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hthl", dir="/tmp"))
    path.chmod(0o755)  # QEMU runs as libvirt-qemu
    yield path
    shutil.rmtree(path, ignore_errors=True)


_CREATED: list[str] = []


@pytest.fixture
def backend(libvirtd: str) -> Iterator[LibvirtHostBackend]:
    """A backend; every domain named in _CREATED is removed afterwards."""
    b = LibvirtHostBackend(URI)
    yield b
    while _CREATED:
        with contextlib.suppress(HostError):
            b.destroy_and_undefine(_CREATED.pop())
    b.close()


def _spec(workdir: Path, name: str) -> TieredVmSpec:
    disk = workdir / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"],
                   check=True)  # fmt: skip
    return TieredVmSpec(
        name=name,
        vcpus=1,
        fast_bytes=256 * MiB,
        slow_bytes=128 * MiB,
        fast_max_bytes=1024 * MiB,
        slow_max_bytes=512 * MiB,
        host_fast_nodes=(0,),
        host_slow_nodes=(0,),
        disk_path=str(disk),
        channel_path=str(workdir / f"{name}.sock"),
        qos_class="silver",
        domain_type="qemu",
        fast_boot_bytes=128 * MiB,
        slow_boot_bytes=64 * MiB,
    )


def _define(backend: LibvirtHostBackend, spec: TieredVmSpec) -> str:
    backend.define_xml(domxml.new_domain_xml(spec).xml)
    _CREATED.append(spec.name)
    return spec.name


def _name() -> str:
    return f"ht-it-{uuid.uuid4().hex[:6]}"


def test_new_tiered_domain_defines_and_parses_back(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    spec = _spec(workdir, _name())
    vm = _define(backend, spec)
    xml = backend.domain_xml(vm, inactive=True)
    fast, slow = parse_allotments(xml)
    assert (fast.requested_bytes, fast.max_bytes) == (256 * MiB, 1024 * MiB)
    assert (slow.guest_node, slow.requested_bytes) == (1, 128 * MiB)
    cells = ET.fromstring(xml).findall("cpu/numa/cell")
    assert [c.get("cpus") for c in cells] == ["0", None]  # node 1 is CPU-less
    meta = parse_metadata(xml)
    assert meta is not None
    assert meta.qos_class == "silver"


def test_metadata_survives_a_new_connection(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    vm = _define(backend, _spec(workdir, _name()))
    meta = TieringMetadata(
        "gold",
        (
            TierMetadata(Tier.FAST, 512 * MiB, 1024 * MiB, (0,)),
            TierMetadata(Tier.SLOW, 128 * MiB, 512 * MiB, (0,), emulated=True),
        ),
    )
    backend.set_metadata(vm, metadata_xml(meta))
    other = LibvirtHostBackend(URI)
    try:
        raw = other.get_metadata(vm)
    finally:
        other.close()
    assert raw is not None
    assert parse_metadata(raw) == meta


def test_live_resize_request_reaches_qemu(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    vm = _define(backend, _spec(workdir, _name()))
    backend.start(vm)
    assert HostCapability.VIRTIO_MEM_RESIZE in backend.capabilities()
    backend.resize(vm, Tier.FAST, 512 * MiB)
    backend.resize(vm, Tier.SLOW, 64 * MiB)
    fast, slow = next(d for d in backend.domains() if d.vm == vm).allotments
    assert (fast.requested_bytes, slow.requested_bytes) == (512 * MiB, 64 * MiB)
    # No guest OS, so no virtio_mem driver: nothing is plugged.
    assert fast.current_bytes == 0


def test_domain_stats_on_tcg(backend: LibvirtHostBackend, workdir: Path) -> None:
    vm = _define(backend, _spec(workdir, _name()))
    backend.start(vm)
    stats = backend.domain_stats(vm)
    assert stats.cpu_time_s is not None
    # query-stats returns KVM counters only for type='kvm' domains.
    assert stats.remote_tlb_flush is None


def test_daemon_adopts_and_ticks_a_real_domain(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    vm = _define(backend, _spec(workdir, _name()))
    backend.start(vm)
    cfg = config.loads('[host]\nuri = "qemu:///system"\n')

    class OnlyThisVm(LibvirtHostBackend):
        """Keeps the daemon away from other tiered VMs on this shared host."""

        def domains(self) -> Sequence[DomainInfo]:
            return [d for d in super().domains() if d.vm == vm]

    mine = OnlyThisVm(URI)
    try:
        daemon = Daemon(cfg, mine, FakeClock())
        daemon.tick()
        status = daemon.status()
    finally:
        mine.close()
    assert list(status["vms"]) == [vm]
    assert status["vms"][vm]["class"] == "silver"
    assert status["host"]["slow_tier_emulated"]


def test_reconnects_after_the_connection_dies(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    vm = _define(backend, _spec(workdir, _name()))
    backend.start(vm)
    backend._conn.close()  # what a libvirtd restart does to us
    assert any(d.vm == vm for d in backend.domains())
    assert backend.reconnects == 1


def test_cli_converts_and_defines_an_existing_domain(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    name = _name()
    plain = f"""<domain type='qemu'><name>{name}</name>
      <memory unit='MiB'>512</memory><vcpu>2</vcpu>
      <os><type arch='x86_64' machine='q35'>hvm</type></os>
      <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""
    backend.define_xml(plain)
    _CREATED.append(name)
    cfg_path = workdir / "host.toml"
    cfg_path.write_text(f'[host]\nuri = "{URI}"\nchannel_dir = "{workdir}"\n')
    argv = ["vm", "define", name, "-c", str(cfg_path), "--convert", "--define"]
    assert cli.main([*argv, "--domain-type", "qemu", "--class", "bronze"]) == 0
    xml = backend.domain_xml(name, inactive=True)
    assert [a.tier for a in parse_allotments(xml)] == [Tier.FAST, Tier.SLOW]
    assert ET.fromstring(xml).findtext("vcpu") == "2"


def test_kvm_domain_exposes_query_stats(
    backend: LibvirtHostBackend, workdir: Path
) -> None:
    """A KVM domain (qemu64 model: host-passthrough trips MSR 0x10a under nested
    KVM here) converted to tiers reports the query-stats counters."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable: KVM statistics need a KVM domain")
    name = _name()
    disk = _spec(workdir, name).disk_path
    plain = f"""<domain type='kvm'><name>{name}</name>
      <memory unit='MiB'>512</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='q35'>hvm</type></os>
      <cpu mode='custom' match='exact' check='none'>
        <model fallback='forbid'>qemu64</model></cpu>
      <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
      </devices></domain>"""
    spec = replace(_spec(workdir, name), domain_type="kvm")
    backend.define_xml(domxml.convert_domain_xml(plain, spec).xml)
    _CREATED.append(name)
    backend.start(name)
    stats = backend.domain_stats(name)
    assert stats.remote_tlb_flush is not None
    assert stats.tlb_flush is not None
    assert stats.exits is not None
