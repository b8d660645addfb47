"""The README's main job: ``hypertier`` (the installed console script) runs the
default evaluation, prints its table and writes report.json and the plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# small enough to run in seconds, large enough that the agents move pages
SCALE = "0.1"
VMS = {"vm1": "gups", "vm2": "kv-zipf", "vm3": "btree", "vm4": "pagerank"}
POLICIES = ("none", "all-fast", "hypertier")


def _table(text: str) -> list[dict[str, str]]:
    """The rows of the fixed-width table printed on stdout, by column name."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = next(
        i
        for i, ln in enumerate(lines)
        if ln.split()[:3] == ["vm", "workload", "policy"]
    )
    names = lines[head].split()
    assert set(lines[head + 1]) <= {"-", " "}
    return [dict(zip(names, ln.split(), strict=True)) for ln in lines[head + 2 :]]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("main-job")
    script = Path(sys.executable).with_name("hypertier")
    done = subprocess.run(
        [str(script), "--out", str(out), "--scale", SCALE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, out


@pytest.mark.slow
def test_main_job_prints_one_row_per_vm_and_policy(main_job: tuple[str, Path]) -> None:
    rows = _table(main_job[0])
    assert [(r["vm"], r["workload"], r["policy"]) for r in rows] == [
        (vm, wl, p) for p in POLICIES for vm, wl in VMS.items()
    ]


@pytest.mark.slow
def test_main_job_table_is_report_json(main_job: tuple[str, Path]) -> None:
    stdout, out = main_job
    doc = json.loads((out / "report.json").read_text())
    assert doc["meta"]["policies"] == list(POLICIES)
    assert len(doc["rows"]) == len(_table(stdout))
    for shown, row in zip(_table(stdout), doc["rows"], strict=True):
        assert (shown["vm"], shown["policy"]) == (row["vm"], row["policy"])
        assert float(shown["elapsed_s"]) == pytest.approx(row["elapsed_s"], abs=5e-4)
        assert float(shown["fast_hit"]) == pytest.approx(
            row["fast_hit_ratio"], abs=5e-4
        )
        assert int(shown["pages_moved"]) == row["pages_moved"]


@pytest.mark.slow
def test_main_job_figures_order_the_policies(main_job: tuple[str, Path]) -> None:
    doc = json.loads((main_job[1] / "report.json").read_text())
    by = {(r["policy"], r["vm"]): r for r in doc["rows"]}
    for vm in VMS:
        none, fast, ht = by["none", vm], by["all-fast", vm], by["hypertier", vm]
        assert fast["fast_hit_ratio"] == 1.0
        assert fast["elapsed_s"] < none["elapsed_s"]
        assert none["pages_moved"] == none["tlb_flush"] == 0
        assert ht["pages_moved"] > 0  # the real agents ran and migrated
        assert ht["mgmt_cpu_s"] > 0
    # kv-zipf's hot keys are scattered: first touch misses them, the agents find them
    assert (
        by["hypertier", "vm2"]["fast_hit_ratio"] > by["none", "vm2"]["fast_hit_ratio"]
    )


@pytest.mark.slow
def test_main_job_writes_the_plots(main_job: tuple[str, Path]) -> None:
    for name in ("placement.png", "hit_ratio.png"):
        data = (main_job[1] / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
