"""HyperTier's agents as the end-to-end VMs run them: the guest agent's TOML and
process inside the guest, the host agent's TOML and process on this machine.

Shared by the end-to-end scenario (scenario.py) and the peer benchmark
(tests/integration/peers/runner.py), so both measure the same configuration.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

from .guestlink import GuestLink
from .machine import URI

GUEST_CONFIG = "/tmp/guest.toml"
GUEST_AGENT_LOG = "/tmp/agent.log"


def guest_toml(pid: int) -> str:
    """The guest agent's TOML: linux backend, node 0 fast, node 1 slow, ``pid`` the
    target."""
    return (
        "[guest]\n"
        'backend = "linux"\n'
        'control_socket = "/run/hypertier/guest.sock"\n'
        'channel_path = "/dev/virtio-ports/org.hypertier.0"\n'
        "fast_nodes = [0]\n"
        "slow_nodes = [1]\n"
        # Under TCG every instruction costs ~10x: the default 0.5 % CPU budget
        # makes the sampler raise its period to max_period (1e6) and see nothing.
        "[sampler]\n"
        "window_s = 2.0\n"
        "cpu_budget_pct = 30.0\n"
        "period = 16\n"
        "max_period = 64\n"
        "[targets]\n"
        f"pids = [{pid}]\n"
    )


def write_guest_config(link: GuestLink, pid: int) -> None:
    """Write :func:`guest_toml` for ``pid`` to :data:`GUEST_CONFIG` in the guest."""
    link.sh(f"cat > {GUEST_CONFIG} <<'EOF'\n{guest_toml(pid)}EOF\n")


def spawn_guest_agent(link: GuestLink) -> int:
    """Start ``hypertier-guest run`` on :data:`GUEST_CONFIG` in the guest (log in
    :data:`GUEST_AGENT_LOG`); return its pid."""
    return link.spawn(f"exec hypertier-guest -v run -c {GUEST_CONFIG}", GUEST_AGENT_LOG)


def write_host_config(run_dir: Path) -> Path:
    """The host agent's TOML in ``run_dir``: libvirt backend, control socket beside
    it, a resize every 2 s at most, and 30 s for the guest to make room before its
    fast tier is unplugged (the default 5 s suits a guest on KVM; under TCG the
    agent needs ~10 s from the Allot to the end of its demotion, and an unplug
    that starts earlier makes the guest kernel migrate whatever sits in the
    blocks it removes, hot pages included, to the slow node). Returns its path."""
    path = run_dir / "host.toml"
    path.write_text(
        "[host]\n"
        'backend = "libvirt"\n'
        f'uri = "{URI}"\n'
        f'control_socket = "{run_dir / "host.sock"}"\n'
        "[policy]\n"
        "interval_s = 1.0\n"
        "min_resize_interval_s = 2.0\n"
        "shrink_notice_s = 30.0\n"
    )
    return path


def spawn_host_agent(cfg: Path, log: BinaryIO) -> subprocess.Popen[bytes]:
    """Start ``hypertier-host -v run -c cfg`` on this machine, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent_host", "-v", "run", "-c", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_host_agent(
    proc: subprocess.Popen[bytes], timeout_s: float = 30.0
) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit code, None if killed."""
    proc.terminate()
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
