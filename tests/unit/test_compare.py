"""The compare harness: cells, determinism, speedups, outputs and its CLI flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emu.evaluation.cli import main as cli_main
from emu.evaluation.compare import (
    PRESETS,
    Cell,
    run_cell,
    run_matrix,
    specs_of,
)
from emu.evaluation.report import SUM_FIELDS, add_speedups, summarize
from emu.evaluation.runner import ROW_FIELDS
from emu.machine import PAGE_SIZE


def _cell(policy: str = "none", vms: int = 1, ratio: int = 2) -> Cell:
    return Cell("gups", policy, "cxl", ratio, vms, 4096, 500_000, 0.01, 10.0, 1)


def test_specs_split_capacity_fast_to_slow_by_the_ratio() -> None:
    specs = specs_of(_cell(vms=3, ratio=5))
    assert [s.name for s in specs] == ["vm1", "vm2", "vm3"]
    s = specs[0]
    assert s.slow_bytes / s.fast_bytes == pytest.approx(5, rel=1e-3)
    assert s.fast_bytes + s.slow_bytes >= s.npages * PAGE_SIZE


def test_seed_preset_gives_gups_a_footprint_four_times_the_fast_tier() -> None:
    m = PRESETS["seed-gups"]
    (spec,) = specs_of(
        Cell("gups", "none", "cxl", m.ratios[0], 1, m.npages, 1, 1, 1, 1)
    )
    assert spec.npages * PAGE_SIZE == pytest.approx(4 * spec.fast_bytes, rel=1e-3)
    assert {"none", "tpp-host", "tpp-guest", "vtmm", "hypertier"} <= set(m.policies)


def test_same_cell_gives_the_same_result() -> None:
    a, b = run_cell(_cell("memtis")), run_cell(_cell("memtis"))
    assert a["rows"] == b["rows"]
    assert a["series"] == b["series"]


def test_rows_carry_the_report_fields_and_the_setup() -> None:
    (row,) = run_cell(_cell())["rows"]  # type: ignore[misc]
    assert set(ROW_FIELDS) | {"workload", "policy", "vm", "profile", "ratio"} <= set(
        row
    )
    assert (row["policy"], row["ratio"], row["vms"]) == ("none", "1:2", 1)


@pytest.mark.slow
def test_parallel_run_equals_serial_run_in_cell_order() -> None:
    cells = [_cell("none"), _cell("hemem"), _cell("all-fast")]
    serial = run_matrix(cells, jobs=1)
    parallel = run_matrix(cells, jobs=2)
    assert [r["rows"] for r in serial] == [r["rows"] for r in parallel]


def _row(policy: str, vm: str, elapsed: float | None) -> dict[str, object]:
    return {
        "workload": "gups",
        "profile": "cxl",
        "ratio": "1:2",
        "vms": 2,
        "vm": vm,
        "policy": policy,
        "elapsed_s": elapsed,
        "fast_hit_ratio": 0.5,
        **dict.fromkeys(SUM_FIELDS, 1),
    }


def test_speedup_is_the_other_policys_elapsed_over_this_ones_per_vm() -> None:
    rows = add_speedups(
        [_row("none", "vm1", 2.0), _row("memtis", "vm1", 1.0), _row("none", "vm2", 3.0),
         _row("memtis", "vm2", None)]
    )  # fmt: skip
    assert rows[1]["speedup_vs_none"] == 2.0
    assert rows[0]["speedup_vs_memtis"] == 0.5
    assert rows[3]["speedup_vs_none"] is None


def test_summary_means_elapsed_and_sums_counters_over_vms() -> None:
    rows = [_row("none", "vm1", 2.0), _row("none", "vm2", 4.0),
            _row("memtis", "vm1", 1.0), _row("memtis", "vm2", 2.0)]  # fmt: skip
    none, memtis = summarize(rows)
    assert none["elapsed_s"] == 3.0
    assert none["remote_tlb_flush"] == 2
    assert memtis["speedup_vs_none"] == 2.0


@pytest.mark.slow
def test_cli_runs_a_matrix_and_writes_json_csv_table_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli_main(
        ["compare", "--preset", "smoke", "--out", str(tmp_path), "--workloads",
         "gups,btree", "--policies", "none,all-fast,hemem", "--profiles", "pmem",
         "--ratios", "1:5", "--vms", "1", "--pages", "4096", "--accesses", "400000",
         "--epoch-s", "0.01", "--max-s", "5", "--seed", "2", "--jobs", "1"]
    )  # fmt: skip
    assert rc == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert {r["policy"] for r in doc["rows"]} == {"none", "all-fast", "hemem"}
    assert {r["profile"] for r in doc["rows"]} == {"pmem"}
    assert doc["meta"]["matrix"]["seed"] == 2
    with (tmp_path / "report.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert "speedup_vs_all-fast" in doc["rows"][0]
    assert (tmp_path / "bars_pmem_1-5_1vm.png").exists()
    assert (tmp_path / "hit_btree_pmem_1-5_1vm.png").exists()
    assert "x_hemem" in capsys.readouterr().out


def test_cli_json_flag_prints_cells_and_no_plots_skips_pngs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli_main(["compare", "--preset", "smoke", "--out", str(tmp_path), "--json",
                   "--no-plots", "--jobs", "1"])  # fmt: skip
    assert rc == 0
    cells = json.loads(capsys.readouterr().out)
    assert {c["policy"] for c in cells} == {"none", "all-fast"}
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "argv",
    [["--ratios", "2:5"], ["--policies", "tpp"], ["--vms", "0"], ["--jobs", "0"]],
    ids=["bad-ratio", "unknown-policy", "zero-vms", "zero-jobs"],
)
def test_bad_matrix_is_a_usage_error(tmp_path: Path, argv: list[str]) -> None:
    try:
        rc = cli_main(["compare", "--preset", "smoke", "--out", str(tmp_path), *argv])
    except SystemExit as err:  # argparse rejects malformed values itself
        rc = int(str(err.code))
    assert rc == 2


@pytest.mark.slow
def test_run_and_compare_write_one_report_schema(tmp_path: Path) -> None:
    run_out, cmp_out = tmp_path / "run", tmp_path / "compare"
    common = ["--policies", "none,all-fast", "--no-plots"]
    assert cli_main(["run", "--out", str(run_out), "--scale", "0.05", *common]) == 0
    assert cli_main(["compare", "--preset", "smoke", "--out", str(cmp_out),
                     "--jobs", "1", *common]) == 0  # fmt: skip
    run_doc = json.loads((run_out / "report.json").read_text())
    cmp_doc = json.loads((cmp_out / "report.json").read_text())
    assert run_doc.keys() == cmp_doc.keys() == {"meta", "rows", "cells", "runs"}
    assert (run_doc["meta"]["command"], cmp_doc["meta"]["command"]) == (
        "run",
        "compare",
    )
    assert run_doc["meta"]["row_fields"] == cmp_doc["meta"]["row_fields"]
    for key in ("rows", "cells", "runs"):
        assert {*run_doc[key][0]} == {*cmp_doc[key][0]} - {"scenario"}, key
    assert len(run_doc["runs"]) == 2
    assert {*run_doc["runs"][0]["series"]["vm1"]} == {
        *cmp_doc["runs"][0]["series"]["vm1"]
    }
