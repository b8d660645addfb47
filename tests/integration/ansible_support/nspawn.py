"""Boot a root filesystem with systemd as PID 1 in a container (systemd-nspawn).

The roles are applied over the chroot connection, where nothing runs; booting the
same tree shows what systemd makes of the installed units: readiness, status
lines, the watchdog, journald priorities. Commands run inside through nsenter(1)
into the container's namespaces (the machine has no systemd-machined, so no
``machinectl shell``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["Container", "NspawnUnavailable", "missing"]


class NspawnUnavailable(Exception):
    """The container cannot boot here; the message says why."""


def missing() -> str:
    """What this machine lacks to boot a container, or "" if nothing."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    tools = (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"))
    for tool, package in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system at /sys/fs/cgroup"
    return ""


class Container:
    """``root`` booted by systemd-nspawn until :meth:`stop`.

    ``capabilities`` are added to nspawn's default set (the units' ambient
    capabilities must be in the container's bounding set), ``syscalls`` to its
    seccomp allow list (nspawn blocks ``perf_event_open`` by default). The
    container has its own network namespace with a loopback, so units with
    PrivateNetwork= work.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        log: Path,
        capabilities: tuple[str, ...] = (),
        syscalls: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.name = name
        self._log_path = log
        self._log = log.open("wb")
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={root}",
            f"--machine={name}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
        ]
        if capabilities:
            argv.append("--capability=" + ",".join(capabilities))
        if syscalls:
            argv.append("--system-call-filter=" + " ".join(syscalls))
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.leader = self._find_leader(timeout_s=30.0)

    def _find_leader(self, timeout_s: float) -> int:
        """The container's PID 1 as this machine sees it (nspawn's child)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NspawnUnavailable(
                    f"systemd-nspawn exited with {self._proc.returncode}: "
                    + self._log_path.read_text(errors="replace")[-2000:]
                )
            for child in _children(self._proc.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.2)
        raise NspawnUnavailable("no systemd inside the container after 30 s")

    def run(
        self, *argv: str, timeout_s: float = 60.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
        )

    def wait_booted(self, timeout_s: float = 180.0) -> str:
        """Wait for the boot to finish; the system state (running, degraded)."""
        # systemctl needs PID 1's private socket, made early in the boot.
        private = Path(f"/proc/{self.leader}/root/run/systemd/private")
        deadline = time.monotonic() + timeout_s
        while not private.exists():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise NspawnUnavailable(
                    "systemd in the container did not come up: "
                    + self._log_path.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.2)
        proc = self.run("systemctl", "is-system-running", "--wait", timeout_s=timeout_s)
        return proc.stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p`` as a dict."""
        out = self.run(
            "systemctl", "show", unit, *(f"--property={p}" for p in props)
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        """Shut the container down (SIGTERM to nspawn: a clean poweroff)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(60.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10.0)
        self._log.close()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
