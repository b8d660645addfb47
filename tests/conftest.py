"""Test-wide settings.

Hypothesis: no per-example deadline. The suite runs on shared 2-core machines
where one example may wait for the CPU far longer than it computes; a slow
example is not a failure (the benchmarks in bench/ measure speed).
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("hypertier", deadline=None)
settings.load_profile("hypertier")
