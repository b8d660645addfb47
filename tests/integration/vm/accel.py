"""Choose the accelerator: KVM when it really boots the guest kernel, else TCG.

Opening /dev/kvm is not enough: on nested, paravirtual KVM hosts the instruction
emulator crashes or stalls stock Debian kernels for minutes in early boot. The probe
boots the guest kernel itself under KVM (no initrd, ``panic=-1``, ``-no-reboot``) and
accepts KVM only if the kernel gets as far as looking for its root filesystem within
a short deadline. ``HYPERTIER_VM_ACCEL=kvm|tcg`` skips the probe.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Printed by the kernel once it is through early boot and looks for the root fs.
_BOOTED_MARKERS = ("VFS: Unable to mount root", "Kernel panic", "Run /init")


@dataclass(frozen=True)
class Accel:
    """The accelerator to use and why: ``domain_type`` is libvirt's 'kvm' or 'qemu'."""

    name: str  # "kvm" or "tcg"
    domain_type: str
    reason: str
    probe_s: float


def _tcg(reason: str, probe_s: float = 0.0) -> Accel:
    return Accel("tcg", "qemu", reason, probe_s)


def choose(
    kernel: Path, qemu: str = "qemu-system-x86_64", timeout_s: float = 20.0
) -> Accel:
    """Probe KVM with ``kernel`` (bounded by ``timeout_s``); fall back to TCG."""
    forced = os.environ.get("HYPERTIER_VM_ACCEL", "auto")
    if forced == "kvm":
        return Accel("kvm", "kvm", "forced by HYPERTIER_VM_ACCEL=kvm", 0.0)
    if forced == "tcg":
        return _tcg("forced by HYPERTIER_VM_ACCEL=tcg")
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as err:
        return _tcg(f"/dev/kvm unusable ({err.strerror})")
    start = time.monotonic()
    cmd = [
        qemu,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-smp",
        "1",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1 root=/dev/nonexistent",
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        out = (
            (err.stdout or b"").decode(errors="replace")
            if isinstance(err.stdout, bytes)
            else (err.stdout or "")
        )
        took = time.monotonic() - start
        last = out.strip().splitlines()[-1:] or ["<no console output>"]
        return _tcg(
            f"KVM probe: kernel did not reach root mount within {timeout_s:.0f} s "
            f"(nested KVM stalls this kernel; last console line: {last[0][:120]!r})",
            took,
        )
    took = time.monotonic() - start
    if any(m in out for m in _BOOTED_MARKERS):
        return Accel("kvm", "kvm", f"KVM probe booted the kernel in {took:.1f} s", took)
    last = out.strip().splitlines()[-1:] or ["<no output>"]
    return _tcg(
        f"KVM probe: QEMU exited rc={proc.returncode} before the kernel reached root "
        f"mount (last line: {last[0][:120]!r})",
        took,
    )
