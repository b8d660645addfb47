"""Test-wide settings.

Hypothesis: no per-example deadline. The suite runs on shared 2-core machines
where one example may wait for the CPU far longer than it computes; a slow
example is not a failure (the benchmarks in bench/ measure speed).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("hypertier", deadline=None)
settings.load_profile("hypertier")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """The CLIs set up logging on the root logger (a handler on the stderr pytest
    captures for that test); later tests must not write to that closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ht", dir="/tmp"))
    yield path
    shutil.rmtree(path)
