"""Boot the cached Debian test image in plain QEMU (TCG, no libvirt) with two NUMA
nodes, node 1 CPU-less and slower in the HMAT, run one shell script as the
payload's init, and return what it printed on the serial console.

For checking the guest programs on the guest kernel quickly, without the host
agent or libvirt (the peer runner does the real comparison). Needs root
(mkfs.ext4 -d), qemu-system-x86_64, qemu-img and a cached base image
(``$HYPERTIER_CACHE/base-*/manifest.json`` naming the suite).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.peers.programs import _cache_root
from tests.integration.vm.tlbtrace import BOOT_PARAM as TLB_TRACE_BOOT_PARAM

__all__ = ["GuestRun", "PlainVm", "base_image"]

# The payload's init.sh is exec'd by the image's /sbin/ht-init with /proc, /sys and
# /dev mounted and the payload at /opt/hypertier; this prefix and suffix wrap the
# caller's script so it always powers the guest off.
_PROLOGUE = """#!/bin/sh
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
echo 1 > /proc/sys/kernel/sysrq
P=/opt/hypertier
"""
_EPILOGUE = """
sync
echo o > /proc/sysrq-trigger
sleep 60
"""


def base_image(suite: str) -> Path:
    """The cached base image directory of ``suite``; SystemExit if there is none."""
    for manifest in sorted(_cache_root().glob("base-*/manifest.json")):
        if json.loads(manifest.read_text()).get("suite") == suite:
            return manifest.parent
    raise SystemExit(
        f"no cached {suite} base image under {_cache_root()}: build it with the "
        "test image builder first"
    )


@dataclass(frozen=True)
class GuestRun:
    console: str
    qemu_s: float


@dataclass
class PlainVm:
    """One throwaway guest: ``node0_mib`` with both vCPUs, ``node1_mib`` CPU-less."""

    work: Path
    suite: str = "trixie"
    node0_mib: int = 256
    node1_mib: int = 768
    hmat: bool = True
    extra_args: list[str] = field(default_factory=list)

    def command(self, overlay: Path, payload: Path, console: Path) -> list[str]:
        base = base_image(self.suite)
        numa = [
            "-object", f"memory-backend-ram,id=ram-node0,size={self.node0_mib}M",
            "-object", f"memory-backend-ram,id=ram-node1,size={self.node1_mib}M",
            "-numa", "node,nodeid=0,cpus=0-1,initiator=0,memdev=ram-node0",
            "-numa", "node,nodeid=1,initiator=0,memdev=ram-node1",
        ]  # fmt: skip
        if self.hmat:
            # the latencies and bandwidths of the peer guest's <interconnects>
            for target, lat, bw in ((0, 100, "20971520K"), (1, 250, "5242880K")):
                lb = f"hmat-lb,initiator=0,target={target},hierarchy=memory"
                numa += ["-numa", f"{lb},data-type=access-latency,latency={lat}"]
                numa += ["-numa", f"{lb},data-type=access-bandwidth,bandwidth={bw}"]
        return [
            "qemu-system-x86_64", "-accel", "tcg",
            "-M", "q35,hmat=on" if self.hmat else "q35", "-smp", "2",
            "-m", f"{self.node0_mib + self.node1_mib}M",
            "-nodefaults", "-display", "none", *numa,
            "-kernel", str(base / "vmlinuz"), "-initrd", str(base / "initrd.img"),
            "-append", "console=ttyS0 root=/dev/vda rw init=/sbin/ht-init loglevel=4 "
            + TLB_TRACE_BOOT_PARAM,
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={payload},if=virtio,format=raw,readonly=on",
            "-serial", f"file:{console}", *self.extra_args,
        ]  # fmt: skip

    def run(
        self,
        script: str,
        files: Mapping[str, Path],
        timeout_s: float = 1800,
        watch: Callable[[str], None] | None = None,
    ) -> GuestRun:
        """Boot, run ``script`` (sh, ``$P`` is the payload directory holding
        ``files``), power off; the console text. ``watch`` sees the console so far
        every half second while the guest runs."""
        self.work.mkdir(parents=True, exist_ok=True)
        payload_dir = self.work / "payload"
        subprocess.run(["rm", "-rf", str(payload_dir)], check=True)
        payload_dir.mkdir()
        for name, src in files.items():
            (payload_dir / name).write_bytes(src.read_bytes())
            (payload_dir / name).chmod(0o755)
        (payload_dir / "init.sh").write_text(_PROLOGUE + script + _EPILOGUE)
        payload = self.work / "payload.ext4"
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", str(payload_dir), str(payload), "64M"],
            check=True,
        )
        overlay = self.work / "root.qcow2"
        overlay.unlink(missing_ok=True)
        rootfs = base_image(self.suite) / "rootfs.ext4"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             str(rootfs), str(overlay)],
            check=True,
        )  # fmt: skip
        console = self.work / "console.log"
        console.unlink(missing_ok=True)
        started = time.monotonic()
        proc = subprocess.Popen(
            self.command(overlay, payload, console),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"guest still running after {timeout_s} s")
                if watch is not None and console.exists():
                    watch(console.read_text(errors="replace"))
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.terminate()
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"qemu exited {proc.returncode}: {err.strip()}")
        return GuestRun(console.read_text(errors="replace"), time.monotonic() - started)
