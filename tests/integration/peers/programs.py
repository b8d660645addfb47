"""Build the guest-side measurement programs and read what they print.

The C programs in ``guest/`` are compiled here on the host with gcc, statically
against glibc (``libc6-dev``), so the same binaries run on any x86-64 guest
(Debian 12 or 13) without packages of their own. Builds are cached under
``$HYPERTIER_CACHE/peers-bin-<hash of the sources and flags>``; nothing built is
committed. The interface of every program is in README.md beside this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CFLAGS",
    "C_HEADERS",
    "C_PROGRAMS",
    "GUEST_DIR",
    "GUEST_PACKAGES",
    "SCRIPTS",
    "BuildError",
    "build_guest_programs",
    "guest_files",
    "parse_json_lines",
]

GUEST_DIR = Path(__file__).resolve().parent / "guest"
# name of the binary -> its source in GUEST_DIR
C_PROGRAMS: Mapping[str, str] = {
    "ht-workload": "ht-workload.c",
    "ht-kvload": "ht-kvload.c",
}
# Headers the C programs include (part of every build's cache key).
C_HEADERS: tuple[str, ...] = ("ht-common.h",)
# Guest-side scripts that run on the guest's python3 (standard library only).
SCRIPTS: tuple[str, ...] = ("ht-collect.py",)
CFLAGS: tuple[str, ...] = ("-O2", "-Wall", "-Wextra", "-Werror", "-static")
# Debian packages the guest image needs for these programs.
GUEST_PACKAGES: tuple[str, ...] = ("python3",)


class BuildError(RuntimeError):
    """A guest program could not be compiled; the message says what is missing."""


def _cache_root() -> Path:
    return Path(os.environ.get("HYPERTIER_CACHE", "/var/cache/hypertier-test"))


def _key(names: Iterable[str]) -> str:
    digest = hashlib.sha256()
    digest.update(" ".join(CFLAGS).encode())
    for header in C_HEADERS:
        digest.update(header.encode())
        digest.update((GUEST_DIR / header).read_bytes())
    for name in sorted(names):
        digest.update(name.encode())
        digest.update((GUEST_DIR / C_PROGRAMS[name]).read_bytes())
    return digest.hexdigest()[:16]


def build_guest_programs(
    cache: Path | None = None, names: Iterable[str] | None = None
) -> dict[str, Path]:
    """Compile the guest C programs (static x86-64) and return name -> binary path.

    Reuses a cached build of identical sources and flags. Raises:
        BuildError: gcc is missing, or the static C library (libc6-dev's libc.a)
            is, or a source does not compile (the compiler's message is included).
    """
    wanted = sorted(names) if names is not None else sorted(C_PROGRAMS)
    unknown = [n for n in wanted if n not in C_PROGRAMS]
    if unknown:
        raise BuildError(
            f"unknown guest programs {unknown}; known: {sorted(C_PROGRAMS)}"
        )
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc not found: install Debian's gcc (scripts/setup does)")
    root = (cache or _cache_root()) / f"peers-bin-{_key(wanted)}"
    if all((root / n).is_file() for n in wanted):
        return {n: root / n for n in wanted}
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peers-bin-build-", dir=root.parent))
    try:
        for name in wanted:
            proc = subprocess.run(
                [
                    gcc,
                    *CFLAGS,
                    "-o",
                    str(work / name),
                    str(GUEST_DIR / C_PROGRAMS[name]),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                hint = ""
                if "cannot find -lc" in proc.stderr:
                    hint = " (static libc.a missing: install libc6-dev)"
                raise BuildError(f"gcc {name} failed{hint}:\n{proc.stderr.strip()}")
        root.mkdir(exist_ok=True)
        for name in wanted:
            os.replace(work / name, root / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {n: root / n for n in wanted}


def guest_files(cache: Path | None = None) -> dict[str, Path]:
    """Everything to copy into the guest (file name -> host path): binaries, scripts."""
    files = build_guest_programs(cache)
    for script in SCRIPTS:
        files[script] = GUEST_DIR / script
    return files


def parse_json_lines(lines: str | Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a program's output, one per non-blank line.

    Raises:
        ValueError: a line is not a JSON object (with its line number and text).
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"line {number}: not JSON ({err}): {line[:200]!r}"
            ) from err
        if not isinstance(record, dict):
            raise ValueError(f"line {number}: not a JSON object: {line[:200]!r}")
        yield record
