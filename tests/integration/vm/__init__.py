"""End-to-end harness: a real Debian 12 VM with two guest NUMA tiers under libvirt.

Builds (and caches) a small Debian guest image, starts libvirtd if nothing else runs
it, defines the VM through ``agent_host.domxml``, boots it (KVM if a quick probe says
it works, else TCG), and drives a scenario through a test-only virtio-serial channel.
Used by ``tests/integration/test_real_vm.py`` and from the command line:
``python -m tests.integration.vm --help``.
"""

from __future__ import annotations

__all__ = [
    "accel",
    "agents",
    "cli",
    "guestlink",
    "image",
    "libvirtd",
    "machine",
    "scenario",
    "tlbtrace",
]
