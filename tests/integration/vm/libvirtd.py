"""Make sure a libvirtd answers on qemu:///system, starting one when nothing runs it.

With systemd as PID 1 the service manager starts it (``systemctl start``); without
one (containers, CI sandboxes) the harness starts ``virtlogd -d`` and ``libvirtd -d``
itself and leaves them running for later runs.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hypertier_common.control import listens

URI = "qemu:///system"
VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")


@dataclass(frozen=True)
class LibvirtdStatus:
    started_by_harness: bool
    how: str
    version: str


def _answers() -> str | None:
    proc = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, text=True, check=False
    )
    return proc.stdout if proc.returncode == 0 else None


def _ensure_virtlogd(timeout_s: float) -> str:
    """Start virtlogd when nothing listens on its socket (QEMU logs go through it)."""
    # A stale socket file refuses connections: that is what domain start
    # reports as "Failed to connect socket to virtlogd-sock".
    if listens(VIRTLOGD_SOCK, timeout_s=2.0):
        return ""
    with contextlib.suppress(FileNotFoundError):
        VIRTLOGD_SOCK.unlink()  # stale: virtlogd refuses to start over it
    if _systemd_is_pid1():
        subprocess.run(["systemctl", "restart", "virtlogd"], check=False)
    else:
        subprocess.run(["virtlogd", "-d"], check=False)
    deadline = time.monotonic() + timeout_s
    while not listens(VIRTLOGD_SOCK, timeout_s=2.0):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"virtlogd does not listen on {VIRTLOGD_SOCK} {timeout_s:.0f} s after"
                " starting it; QEMU domains cannot start without it"
            )
        time.sleep(0.2)
    return "; virtlogd started"


def _systemd_is_pid1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def _fix_kvm_node_access() -> str:
    """Give /dev/kvm the group and mode Debian's udev rules give it (kvm, 0660).

    Without udev /dev/kvm stays root-only 0600. libvirt 9.0 probes QEMU's
    capabilities as root (KVM found), then checks /dev/kvm as the QEMU user
    (libvirt-qemu, group kvm), finds it inaccessible, declares the cache outdated
    ("KVM was enabled when probing ..., but it is not available now") and re-probes
    QEMU on every define/start: one to two minutes each on two busy cores.
    """
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return ""
    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return ""
    st = kvm.stat()
    if st.st_gid == gid and st.st_mode & 0o060 == 0o060:
        return ""
    os.chown(kvm, -1, gid)
    kvm.chmod(st.st_mode | 0o060)
    return "; /dev/kvm set to group kvm mode 0660 as udev would"


def ensure_libvirtd(timeout_s: float = 30.0) -> LibvirtdStatus:
    """Return once ``virsh -c qemu:///system version`` works.

    Raises:
        RuntimeError: virsh/libvirtd are not installed, or the daemon does not
            answer within ``timeout_s`` (the message says what was tried).
    """
    for tool in ("virsh", "libvirtd", "virtlogd"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} not found: install libvirt-daemon-system and libvirt-clients"
            )
    fixed = "" if _systemd_is_pid1() else _fix_kvm_node_access()
    fixed += _ensure_virtlogd(timeout_s)
    version = _answers()
    if version is not None:
        return LibvirtdStatus(False, "already running" + fixed, _version_line(version))
    if _systemd_is_pid1():
        how = "systemctl start libvirtd"
        subprocess.run(["systemctl", "start", "libvirtd"], check=False)
    else:
        how = "libvirtd -d (no service manager)"
        subprocess.run(["libvirtd", "-d"], check=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        version = _answers()
        if version is not None:
            return LibvirtdStatus(True, how + fixed, _version_line(version))
        time.sleep(0.2)
    raise RuntimeError(
        f"libvirtd did not answer on {URI} {timeout_s:.0f} s after: {how}"
    )


def _version_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(ln for ln in lines if ln.startswith(("Using library", "Running")))
