"""Build and cache Debian guest images (debootstrap, mkfs.ext4 -d: no loops).

The suite is a parameter: the end-to-end test uses Debian 12 (bookworm,
:data:`BOOKWORM`), the side-by-side peer benchmark Debian 13 (trixie, kernel 6.12
with memory tiers and DAMON's migrate actions; tests/integration/peers).

The base image (root filesystem, kernel, initrd) is cached under
``$HYPERTIER_CACHE`` (default /var/cache/hypertier-test), keyed by a hash of
everything that goes into it. The project payload (a wheel built from this tree,
the guest test driver and workload) goes on a second small disk built per run, so
code changes never invalidate the base image.

The Debian mirror is read at run time from this machine's apt configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
GUEST_DIR = Path(__file__).resolve().parent / "guest"
SUITE = "bookworm"  # the default suite: the end-to-end test's guest
# python3-numpy/psutil: the guest agent's runtime deps; kmod: modprobe; numactl:
# diagnostics; the stock Debian kernel provides virtio_mem, virtio_console, soft-dirty.
PACKAGES = (
    "python3",
    "python3-numpy",
    "python3-psutil",
    "linux-image-amd64",
    "kmod",
    "numactl",
    "procps",
)
# Loaded from the initrd: root on virtio-blk, tiers as virtio-mem, channels as
# virtio-console. MODULES=list keeps the initrd small enough for 256 MiB boot memory
# (Debian's MODULES=most initrd is ~35 MB and fails to unpack there).
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_mem", "virtio_console", "ext4")
# Kernel module trees a VM on virtio never needs; dropped to shrink the image.
_PRUNE_MODULE_DIRS = (
    "drivers/gpu",
    "drivers/net/wireless",
    "drivers/media",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/bluetooth",
    "drivers/iio",
    "drivers/isdn",
    "drivers/hid",
    "drivers/usb",
    "drivers/input",
    "drivers/scsi",
    "drivers/net/ethernet",
    "sound",
    "net/wireless",
    "net/bluetooth",
    "net/mac80211",
)
BASE_INIT = """#!/bin/sh
# HyperTier test VM init (PID 1): mount the basics, then hand over to the payload
# disk's init.sh. Written by tests/integration/vm/image.py.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /opt/hypertier
if mount -t ext4 -o ro /dev/vdb /opt/hypertier; then
    exec /bin/sh /opt/hypertier/init.sh
fi
echo "ht-init: no payload disk /dev/vdb" >/dev/console
exec /bin/sh
"""
IMAGE_VERSION = 1  # bump when the build steps change


@dataclass(frozen=True)
class ImageSpec:
    """What goes into a base image: the Debian suite and the packages on top of it."""

    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES
    image_size: str = "2G"


BOOKWORM = ImageSpec()


def cache_dir() -> Path:
    return Path(os.environ.get("HYPERTIER_CACHE", "/var/cache/hypertier-test"))


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror URL this machine's apt uses (deb822 or one-line format).

    A mirror listed for another suite serves ``suite`` too (one archive holds every
    release), so a bookworm machine builds trixie guests from its own mirror.
    """
    candidates: list[str] = []
    for listed in (suite, SUITE, r"[a-z]+"):
        candidates = _mirrors(listed)
        if candidates:
            return candidates[0]
    raise RuntimeError(
        f"no Debian mirror in /etc/apt/sources.list(.d): cannot debootstrap {suite}"
    )


def _mirrors(suite_re: str) -> list[str]:
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        text = path.read_text()
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\b" + suite_re + r"\b", stanza, re.M):
                m = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if m and "security" not in m.group(1):
                    candidates.append(m.group(1))
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in lists:
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.split()
                if (
                    len(parts) >= 3
                    and parts[0] == "deb"
                    and any(re.fullmatch(suite_re, p) for p in parts[2:])
                    and "security" not in line
                ):
                    url = next(p for p in parts[1:] if "://" in p)
                    candidates.append(url)
    return candidates


@dataclass(frozen=True)
class BaseImage:
    """A cached guest image: ext4 root filesystem, kernel and initrd."""

    root: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    key: str
    built_s: float | None  # None: taken from the cache


def _key(spec: ImageSpec) -> str:
    inputs: dict[str, object] = {
        "version": IMAGE_VERSION,
        "suite": spec.suite,
        "packages": spec.packages,
        "modules": INITRD_MODULES,
        "prune": _PRUNE_MODULE_DIRS,
        "init": BASE_INIT,
    }
    if spec.image_size != BOOKWORM.image_size:
        inputs["size"] = spec.image_size
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _run(cmd: list[str], redact: str = "", **kwargs: object) -> None:
    shown = " ".join(cmd)
    log.info("image: %s", shown.replace(redact, "<apt mirror>") if redact else shown)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def build_base_image(
    cache: Path | None = None, spec: ImageSpec = BOOKWORM
) -> BaseImage:
    """Return the cached base image, building it first if missing (~2-5 min).

    Needs root, debootstrap, mkfs.ext4 (e2fsprogs >= 1.43 for ``-d``) and the
    Debian mirror of this machine's apt configuration.
    """
    cache = cache or cache_dir()
    key = _key(spec)
    root = cache / f"base-{key}"
    image = BaseImage(
        root,
        root / "rootfs.ext4",
        root / "vmlinuz",
        root / "initrd.img",
        key,
        None,
    )
    if (root / "manifest.json").is_file():
        return image
    start = time.monotonic()
    mirror = debian_mirror(spec.suite)
    debs = cache / ("debs" if spec.suite == SUITE else f"debs-{spec.suite}")
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=cache))
    try:
        rootfs = work / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--cache-dir={debs}",
                f"--include={','.join(spec.packages)}",
                spec.suite,
                str(rootfs),
                mirror,
            ],
            redact=mirror,
            stdout=subprocess.DEVNULL,
        )
        _configure_rootfs(rootfs)
        boot = rootfs / "boot"
        kernel = max(boot.glob("vmlinuz-*"))
        initrd = max(boot.glob("initrd.img-*"))
        out = work / "out"
        out.mkdir()
        shutil.copy(kernel, out / "vmlinuz")
        shutil.copy(initrd, out / "initrd.img")
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "htroot",
                "-d",
                str(rootfs),
                str(out / "rootfs.ext4"),
                spec.image_size,
            ]
        )
        manifest = {
            "key": key,
            "suite": spec.suite,
            "packages": spec.packages,
            "kernel": kernel.name,
            "built_s": round(time.monotonic() - start, 1),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        out.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BaseImage(
        root,
        root / "rootfs.ext4",
        root / "vmlinuz",
        root / "initrd.img",
        key,
        time.monotonic() - start,
    )


def _configure_rootfs(rootfs: Path) -> None:
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt"):
        shutil.rmtree(rootfs / sub, ignore_errors=True)
    for moddir in (rootfs / "usr/lib/modules").glob("*/kernel"):
        for prune in _PRUNE_MODULE_DIRS:
            shutil.rmtree(moddir / prune, ignore_errors=True)
    conf = rootfs / "etc/initramfs-tools"
    (conf / "modules").write_text("\n".join(INITRD_MODULES) + "\n")
    (conf / "conf.d" / "hypertier.conf").write_text("MODULES=list\nCOMPRESS=gzip\n")
    kernels = [p.name for p in (rootfs / "usr/lib/modules").iterdir()]
    for version in kernels:
        _run(["chroot", str(rootfs), "depmod", version])
    _run(["chroot", str(rootfs), "update-initramfs", "-u", "-k", "all"])
    init = rootfs / "sbin/ht-init"
    init.write_text(BASE_INIT)
    init.chmod(0o755)
    (rootfs / "etc/hostname").write_text("ht-guest\n")
    (rootfs / "etc/fstab").write_text("")


def build_wheel(dest: Path) -> Path:
    """Build the project wheel from this tree (no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    python = REPO / ".venv/bin/python"
    _run(
        [
            str(python if python.exists() else "python3"),
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dest),
            str(REPO),
        ],
        stdout=subprocess.DEVNULL,
    )
    return max(dest.glob("hypertier-*.whl"), key=lambda p: p.stat().st_mtime)


def build_payload(
    run_dir: Path, extra: dict[str, Path] | None = None, size: str = "64M"
) -> Path:
    """A small ext4 disk with the installed wheel, guest driver, workload, init.sh.

    The wheel is installed by unpacking it into ``site/`` (what pip does for a pure
    wheel); ``bin/hypertier-guest`` runs its console script. ``extra`` maps paths
    inside the payload (``/opt/hypertier/<name>`` in the guest) to host files or
    directories copied there as they are.
    """
    payload = run_dir / "payload"
    shutil.rmtree(payload, ignore_errors=True)
    site = payload / "site"
    site.mkdir(parents=True)
    wheel = build_wheel(run_dir / "wheel")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    for name in os.listdir(GUEST_DIR):
        if name.endswith((".py", ".sh")):
            shutil.copy(GUEST_DIR / name, payload / name)
    bindir = payload / "bin"
    bindir.mkdir()
    wrapper = bindir / "hypertier-guest"
    wrapper.write_text(
        "#!/bin/sh\nPYTHONPATH=/opt/hypertier/site exec python3 -c "
        "'import sys; from agent_guest.cli import main; sys.exit(main())' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    (payload / "wheel.txt").write_text(wheel.name + "\n")
    for name, src in (extra or {}).items():
        dest = payload / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copy2(src, dest)
    disk = run_dir / "payload.ext4"
    disk.unlink(missing_ok=True)
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "htpayload",
            "-d",
            str(payload),
            str(disk),
            size,
        ]
    )
    disk.chmod(0o644)
    return disk


def make_overlay(base: BaseImage, run_dir: Path) -> Path:
    """A qcow2 overlay on the cached root filesystem, so runs never modify the cache."""
    overlay = run_dir / "root.qcow2"
    overlay.unlink(missing_ok=True)
    _run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(base.rootfs),
            str(overlay),
        ]
    )
    return overlay
