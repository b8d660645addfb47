"""Debian 12 root filesystems for applying the roles with Ansible's chroot connection.

One minbase rootfs is built with debootstrap(8) per cache key and kept as a tarball
in the cache directory (``$HYPERTIER_CACHE/ansible-rootfs`` or
``/var/cache/hypertier-test/ansible-rootfs``); every test gets a fresh copy by
unpacking it. The Debian mirror is read from this machine's apt configuration.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = [
    "BASE_PACKAGES",
    "SUITE",
    "RootfsUnavailable",
    "apt_mirror",
    "base_tarball",
    "cache_dir",
    "remove",
    "scratch_dir",
    "unpack",
]

SUITE = "bookworm"
# What every Debian 12 system the roles target already has: Python for Ansible's
# modules (python3-apt for its apt module), systemd for units, udev for rules.
BASE_PACKAGES = ("python3", "python3-apt", "systemd", "udev")
# Package scripts must not start daemons inside the chroot (invoke-rc.d(8)).
_POLICY_RC_D = "#!/bin/sh\n# HyperTier tests: no services in a chroot.\nexit 101\n"
# Throwaway test chroots: dpkg need not fsync every file (dpkg(1) --force-unsafe-io).
_DPKG_UNSAFE_IO = "# HyperTier tests: throwaway chroot.\nforce-unsafe-io\n"
_LAYOUT_VERSION = 2
# Unpacked copies go to tmpfs when it has this much room: dpkg and rm(1) on disk are
# slow on a busy CI machine.
_SCRATCH_MIN_FREE_BYTES = 8 << 30


class RootfsUnavailable(Exception):
    """A rootfs cannot be built here; the message says what is missing."""


def cache_dir() -> Path:
    """Directory holding the rootfs tarballs (created)."""
    root = Path(os.environ.get("HYPERTIER_CACHE", "/var/cache/hypertier-test"))
    path = root / "ansible-rootfs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian archive URL this machine's apt uses (deb822 sources first).

    Raises:
        RootfsUnavailable: no Debian archive URL is configured.
    """
    candidates: list[str] = []
    for sources in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        candidates += re.findall(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
    for listfile in [
        etc_apt / "sources.list",
        *sorted(etc_apt.glob("sources.list.d/*.list")),
    ]:
        if listfile.exists():
            candidates += re.findall(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", listfile.read_text(), re.MULTILINE
            )
    for uri in candidates:
        if uri.startswith(("http://", "https://", "file:/")) and "security" not in uri:
            return uri
    raise RootfsUnavailable(f"no Debian archive URL in {etc_apt}/sources.list(.d)")


def _key(packages: tuple[str, ...]) -> str:
    spec = {
        "suite": SUITE,
        "variant": "minbase",
        "packages": sorted(packages),
        "layout": _LAYOUT_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def base_tarball(packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    """Path of the cached rootfs tarball, building it first if needed (~1 min).

    Concurrent callers wait on a lock file; only one builds.

    Raises:
        RootfsUnavailable: not root, or debootstrap missing.
    """
    if os.geteuid() != 0:
        raise RootfsUnavailable("debootstrap and chroot need root (run as root)")
    if shutil.which("debootstrap") is None:
        raise RootfsUnavailable(
            "debootstrap not installed (apt-get install debootstrap)"
        )
    cache = cache_dir()
    tarball = cache / f"debian12-minbase-{_key(packages)}.tar"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            for stale in cache.glob("debian12-minbase-*.tar"):
                stale.unlink()
            _build(tarball, packages)
    return tarball


def _build(tarball: Path, packages: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="build-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                SUITE,
                str(root),
                apt_mirror(),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text(_POLICY_RC_D)
        policy.chmod(0o755)
        (root / "etc/dpkg/dpkg.cfg.d/hypertier-unsafe-io").write_text(_DPKG_UNSAFE_IO)
        # Package lists once here, so role runs find a fresh apt cache.
        subprocess.run(
            ["chroot", str(root), "apt-get", "update", "-q"],
            check=True,
            capture_output=True,
            text=True,
        )
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
            check=True,
        )
        partial.rename(tarball)


def scratch_dir(fallback: Path) -> Path:
    """A new empty directory for unpacked copies: on /dev/shm when that is tmpfs with
    room enough, else under fallback. Remove it with remove()."""
    shm = Path("/dev/shm")
    parent = fallback
    if shm.is_dir() and os.access(shm, os.W_OK):
        stat = os.statvfs(shm)
        if stat.f_bavail * stat.f_frsize >= _SCRATCH_MIN_FREE_BYTES:
            parent = shm
    return Path(tempfile.mkdtemp(prefix="hypertier-ansible-", dir=parent))


def remove(path: Path) -> None:
    """Remove an unpacked rootfs (or its scratch dir); never crosses into a mount."""
    # rm(1) is much faster than shutil.rmtree here, and --one-file-system keeps it
    # out of anything mounted inside by mistake.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def unpack(tarball: Path, dest: Path) -> Path:
    """Unpack a rootfs tarball into dest (created) and return dest."""
    dest.mkdir(parents=True)
    subprocess.run(
        ["tar", "--numeric-owner", "-C", str(dest), "-xpf", str(tarball)], check=True
    )
    return dest
