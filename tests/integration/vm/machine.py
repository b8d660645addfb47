"""The test VM: defined through agent_host.domxml, booted, resized, torn down.

The domain XML comes from :func:`agent_host.domxml.new_domain_xml` (the host agent's
own path); the harness only adds what the test needs on top: a read-only payload
disk (vdb) and a second virtio-serial channel for the test driver.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_host.allotments import parse_allotments, resize_device_xml
from agent_host.backend import Allotment, Tier
from agent_host.domxml import new_domain_xml
from agent_host.vmspec import TieredVmSpec

from .accel import Accel
from .guestlink import TEST_CHANNEL, GuestLink
from .image import BaseImage
from .tlbtrace import BOOT_PARAM as TLB_TRACE_BOOT_PARAM

log = logging.getLogger(__name__)
MiB = 1 << 20
URI = "qemu:///system"


@dataclass(frozen=True)
class VmShape:
    """Sizes of the test VM: per tier boot memory plus a virtio-mem allotment."""

    name: str = "ht-e2e"
    vcpus: int = 2
    # Small, so a fast allotment can squeeze node 0: the squeeze needs node 0's
    # memory beside the device, less what the guest's own use takes of it, to
    # be below the workload's hot memory (~61 MiB). The guest's own use can
    # read as nearly nothing (2 MiB in one run: the agent counts the workload's
    # whole RSS, wherever its pages are), so the boot memory alone has to be
    # below that: 96 MiB (92 MiB in MemTotal) failed. The boot total stays
    # 256 MiB.
    fast_boot_mib: int = 48
    slow_boot_mib: int = 208
    fast_mib: int = 256  # requested virtio-mem; node 0 = 304 MiB once plugged
    slow_mib: int = 384  # node 1 = 592 MiB once plugged
    fast_max_mib: int = 1024
    slow_max_mib: int = 1024


def _libvirt() -> Any:
    import libvirt  # Debian's python3-libvirt, seen through the venv

    return libvirt


class TestVm:
    """One tiered VM under qemu:///system, in ``run_dir``."""

    __test__ = False  # not a pytest class

    def __init__(
        self, base: BaseImage, accel: Accel, run_dir: Path, shape: VmShape = VmShape()
    ) -> None:
        self.base = base
        self.accel = accel
        self.run_dir = run_dir
        self.shape = shape
        self.console_log = run_dir / "console.log"
        self.agent_socket = run_dir / "agent.sock"
        self.test_socket = run_dir / "test.sock"
        self.conn = _libvirt().open(URI)
        self.dom: Any = None
        self.link = GuestLink(self.test_socket)
        self.notes: tuple[str, ...] = ()

    def spec(self, root_disk: Path) -> TieredVmSpec:
        s = self.shape
        host_nodes = _host_nodes()
        return TieredVmSpec(
            name=s.name,
            vcpus=s.vcpus,
            fast_bytes=s.fast_mib * MiB,
            slow_bytes=s.slow_mib * MiB,
            fast_max_bytes=s.fast_max_mib * MiB,
            slow_max_bytes=s.slow_max_mib * MiB,
            host_fast_nodes=host_nodes[0],
            host_slow_nodes=host_nodes[1],
            disk_path=str(root_disk),
            channel_path=str(self.agent_socket),
            qos_class="standard",
            fast_boot_bytes=s.fast_boot_mib * MiB,
            slow_boot_bytes=s.slow_boot_mib * MiB,
            kernel=str(self.base.kernel),
            initrd=str(self.base.initrd),
            cmdline=(
                "console=ttyS0 root=/dev/vda rw init=/sbin/ht-init "
                f"memhp_default_state=online_movable loglevel=4 {TLB_TRACE_BOOT_PARAM}"
            ),
            domain_type="kvm" if self.accel.domain_type == "kvm" else "qemu",
            emulator=shutil.which("qemu-system-x86_64")
            or "/usr/bin/qemu-system-x86_64",
            console_log_path=str(self.console_log),
        )

    def domain_xml(self, root_disk: Path, payload: Path) -> str:
        result = new_domain_xml(self.spec(root_disk))
        self.notes = result.notes
        domain = ET.fromstring(result.xml)
        devices = domain.find("devices")
        assert devices is not None
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        ET.SubElement(disk, "source", file=str(payload))
        ET.SubElement(disk, "target", dev="vdb", bus="virtio")
        ET.SubElement(disk, "readonly")
        chan = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(chan, "source", mode="bind", path=str(self.test_socket))
        ET.SubElement(chan, "target", type="virtio", name=TEST_CHANNEL)
        return ET.tostring(domain, encoding="unicode")

    def define(self, root_disk: Path, payload: Path) -> None:
        self.remove_stale(self.conn, self.shape.name)
        _make_writable_for_qemu(self.run_dir)
        for path in (self.console_log, self.agent_socket, self.test_socket):
            path.unlink(missing_ok=True)
        xml = self.domain_xml(root_disk, payload)
        (self.run_dir / "domain.xml").write_text(xml)
        self.dom = self.conn.defineXML(xml)

    @staticmethod
    def remove_stale(conn: Any, name: str) -> None:
        libvirt = _libvirt()
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        if dom.isActive():
            dom.destroy()
        dom.undefine()

    def start(self, timeout_s: float) -> dict[str, float]:
        """Boot and wait for the test driver; returns wall and guest boot times."""
        start = time.monotonic()
        self.dom.create()
        guest_uptime_s = self.link.wait_ready(timeout_s)
        wall_s = time.monotonic() - start
        cpu_s = self.cpu_time_s()
        return {"wall_s": wall_s, "guest_uptime_s": guest_uptime_s, "qemu_cpu_s": cpu_s}

    def cpu_time_s(self) -> float:
        # virDomainGetInfo: [state, maxMem, memory, nrVirtCpu, cpuTime(ns)]
        return float(self.dom.info()[4]) / 1e9

    def xml(self) -> str:
        return str(self.dom.XMLDesc(0))

    def allotments(self) -> dict[Tier, Allotment]:
        return {a.tier: a for a in parse_allotments(self.xml())}

    def resize_raw(self, tier: Tier, requested_bytes: int) -> None:
        """Change ``<requested>`` with virDomainUpdateDeviceFlags (live)."""
        dev = resize_device_xml(self.xml(), tier, requested_bytes)
        self.dom.updateDeviceFlags(dev, _libvirt().VIR_DOMAIN_AFFECT_LIVE)

    def domstats(self) -> dict[str, Any]:
        stats = self.conn.domainListGetStats([self.dom], 0)
        return dict(stats[0][1]) if stats else {}

    def qemu_query_stats(self) -> dict[str, Any]:
        """QEMU ``query-stats`` (KVM per-VM and per-vCPU counters), raw."""
        import libvirt_qemu

        out: dict[str, Any] = {}
        for target in ("vm", "vcpu"):
            cmd = {"execute": "query-stats", "arguments": {"target": target}}
            try:
                reply = libvirt_qemu.qemuMonitorCommand(self.dom, json.dumps(cmd), 0)
                out[target] = json.loads(reply).get("return")
            except _libvirt().libvirtError as err:
                out[target] = {"error": str(err)}
        return out

    def destroy(self) -> None:
        self.link.close()
        if self.dom is not None:
            libvirt = _libvirt()
            try:
                if self.dom.isActive():
                    self.dom.destroy()
                self.dom.undefine()
            except libvirt.libvirtError as err:
                log.warning("teardown of %s: %s", self.shape.name, err)
            self.dom = None
        self.conn.close()


def _host_nodes() -> tuple[list[int], list[int]]:
    """Host fast nodes (with CPUs) and slow nodes (CPU-less); one node backs both."""
    base = Path("/sys/devices/system/node")
    with_cpus: list[int] = []
    cpuless: list[int] = []
    for node_dir in sorted(base.glob("node[0-9]*")):
        node = int(node_dir.name[4:])
        cpulist = (node_dir / "cpulist").read_text().strip()
        (with_cpus if cpulist else cpuless).append(node)
    if not with_cpus:
        with_cpus = [0]
    return with_cpus, cpuless or with_cpus


def _make_writable_for_qemu(run_dir: Path) -> None:
    """QEMU (user libvirt-qemu on Debian) creates the channel sockets in run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        user = pwd.getpwnam("libvirt-qemu")
        os.chown(run_dir, user.pw_uid, user.pw_gid)
    except KeyError:
        run_dir.chmod(0o1777)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a console or agent log on this machine."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"<no console log: {err}>"
