"""The guest programs run on this host for their own tests (test_guest_programs.py,
test_kvload.py, test_collector.py): build or skip, run, read the JSON lines.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .programs import BuildError, build_guest_programs, parse_json_lines


def build_or_skip(cache: Path, name: str) -> Path:
    """The binary of the C program ``name`` built into ``cache``; the test skips,
    saying why, where it cannot be built."""
    try:
        return build_guest_programs(cache, [name])[name]
    except BuildError as err:
        pytest.skip(f"cannot build {name}: {err}")


def run(
    argv: Sequence[str | Path], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end, stdout and stderr captured as text; any exit code."""
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def json_records(
    argv: Sequence[str | Path], timeout_s: float = 60
) -> list[dict[str, Any]]:
    """The JSON lines of a run that must exit 0 (its stderr in the failure)."""
    proc = run(argv, timeout_s)
    assert proc.returncode == 0, proc.stderr
    return list(parse_json_lines(proc.stdout))


def assert_usage_error(argv: Sequence[str | Path], message: str) -> None:
    """Bad arguments: exit 2, ``message`` on stderr, nothing on stdout."""
    proc = run(argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""
