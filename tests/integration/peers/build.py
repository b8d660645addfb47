"""Cached artefacts of the peer benchmark: the trixie guest image, a trixie build
root (Go), memtierd built in it, damo from PyPI (the guest programs are built by
:mod:`tests.integration.peers.programs`).

Everything lands under ``$HYPERTIER_CACHE`` keyed by its inputs; the project
payload (wheel, guest programs, peer binaries) goes on the per-run payload disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.vm import image

from . import programs

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TRIXIE_SUITE = "trixie"
# The end-to-end guest's packages (the guest agent's runtime deps, the kernel -
# trixie's 6.12: memory tiers, DAMON migrate_hot/migrate_cold -, numactl for
# diagnostics) and the real key-value program with its own load generator.
TRIXIE_PACKAGES = (*image.PACKAGES, "redis-server", "redis-tools")
# A trixie root to compile in: memtierd from Debian's Go packages (no module
# proxy), and the guest's C programs against trixie's libc.
BUILDER_PACKAGES = (
    "golang-go",
    "golang-golang-x-sys-dev",
    "golang-gopkg-yaml.v3-dev",
    "gcc",
    "libc6-dev",
    "libnuma-dev",
)
BUILDER_VERSION = 1
# intel/memtierd's source: shared/peers/memtierd beside this checkout (where the
# project keeps third-party peers), or HYPERTIER_MEMTIERD_SRC.
MEMTIERD_SRC = Path(
    os.environ.get("HYPERTIER_MEMTIERD_SRC")
    or image.REPO.parent / "shared/peers/memtierd"
)
DAMO_VERSION = "3.4.3"


def guest_packages() -> tuple[str, ...]:
    """The trixie image's packages plus those the guest programs need."""
    extra = [p for p in programs.GUEST_PACKAGES if p not in TRIXIE_PACKAGES]
    return TRIXIE_PACKAGES + tuple(extra)


def trixie_spec() -> image.ImageSpec:
    return image.ImageSpec(suite=TRIXIE_SUITE, packages=guest_packages())


def build_guest_image(cache: Path | None = None) -> image.BaseImage:
    """The cached Debian 13 guest image (built first if missing, ~4-6 min)."""
    return image.build_base_image(cache, trixie_spec())


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Builder:
    """A debootstrapped trixie root with gcc and Go, kept as a directory."""

    root: Path
    built_s: float | None

    def run(self, cmd: str, timeout_s: float = 900.0) -> None:
        """Run ``cmd`` with /bin/sh inside the root (chroot; no network needed)."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        log.info("builder: %s", cmd)
        subprocess.run(
            ["chroot", str(self.root), "/bin/sh", "-c", cmd],
            check=True,
            env=env,
            timeout=timeout_s,
        )


def build_builder(cache: Path | None = None) -> Builder:
    """Return the cached trixie build root, debootstrapping it first if missing."""
    cache = cache or image.cache_dir()
    key = _digest(
        {"v": BUILDER_VERSION, "suite": TRIXIE_SUITE, "pkgs": BUILDER_PACKAGES}
    )
    root = cache / f"builder-{TRIXIE_SUITE}-{key}"
    if (root / "etc/hypertier-builder").is_file():
        return Builder(root, None)
    start = time.monotonic()
    mirror = image.debian_mirror(TRIXIE_SUITE)
    debs = cache / f"debs-{TRIXIE_SUITE}"
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"builder-{key}-", dir=cache))
    try:
        log.info("builder: debootstrap %s (+%s)", TRIXIE_SUITE, BUILDER_PACKAGES)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--cache-dir={debs}",
                f"--include={','.join(BUILDER_PACKAGES)}",
                TRIXIE_SUITE,
                str(work / "root"),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (work / "root/etc/hypertier-builder").write_text(key + "\n")
        (work / "root").rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Builder(root, time.monotonic() - start)


def _tree_digest(src: Path, suffixes: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name.endswith(suffixes):
            h.update(str(path.relative_to(src)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_memtierd(builder: Builder, cache: Path | None = None) -> Path:
    """memtierd built from :data:`MEMTIERD_SRC` in the trixie root (cached binary).

    GOPATH mode over Debian's Go packages (golang.org/x/sys, gopkg.in/yaml.v3), as
    the source's notes describe; cgo on for move_pages. The source is copied into
    the build root only, never into this project.

    Raises:
        FileNotFoundError: the memtierd source is not where it is expected.
    """
    cache = cache or image.cache_dir()
    if not (MEMTIERD_SRC / "cmd/memtierd/main.go").is_file():
        raise FileNotFoundError(
            f"memtierd source not found at {MEMTIERD_SRC} "
            "(set HYPERTIER_MEMTIERD_SRC to an intel/memtierd checkout)"
        )
    key = _tree_digest(MEMTIERD_SRC, (".go", ".mod", ".sum"))
    out = cache / f"memtierd-{key}" / "memtierd"
    if out.is_file():
        return out
    src = builder.root / "root/go/src/github.com/intel/memtierd"
    shutil.rmtree(src, ignore_errors=True)
    src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(MEMTIERD_SRC, src)
    builder.run(
        "cd /root/go/src/github.com/intel/memtierd && "
        # GOROOT given: without /proc in the chroot, go cannot find itself.
        "GO111MODULE=off GOPATH=/root/go:/usr/share/gocode CGO_ENABLED=1 "
        "GOROOT=/usr/lib/go GOTELEMETRY=off GOFLAGS=-buildvcs=false "
        "GOCACHE=/root/.cache/go-build go build -o /root/memtierd ./cmd/memtierd"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(builder.root / "root/memtierd", out)
    out.chmod(0o755)
    return out


def fetch_damo(cache: Path | None = None) -> Path:
    """damo's wheel from PyPI (pip download, cached); the guest has no network."""
    cache = cache or image.cache_dir()
    dest = cache / f"damo-{DAMO_VERSION}"
    wheels = sorted(dest.glob("damo-*.whl")) if dest.is_dir() else []
    if wheels:
        return wheels[0]
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(dest),
            f"damo=={DAMO_VERSION}",
        ],
        check=True,
    )
    return sorted(dest.glob("damo-*.whl"))[0]
