"""The oracle: best static placement, hit/oracle, convergence and steady state."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.evaluation import cmd_run
from emu.evaluation.cli import main as cli_main
from emu.evaluation.compare import PRESETS, Cell, format_cells, run_cell
from emu.evaluation.report import summarize
from emu.evaluation.runner import run_scenario
from emu.machine import PAGE_SIZE
from emu.policies import VmSpec, make_policy
from emu.policies.oracle import oracle_metrics, top_k_share
from emu.workloads.trace import Trace

MIB = 1 << 20


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    k=st.integers(0, 8),
)
def test_oracle_share_beats_every_static_placement(counts: list[int], k: int) -> None:
    c = np.array(counts)
    total = c.sum()
    best = top_k_share(c, k)
    for fast in itertools.combinations(range(len(c)), min(k, len(c))):
        share = c[list(fast)].sum() / total if total else 1.0
        assert best >= share - 1e-12


def _spec(workload: str = "kv-zipf", accesses: int = 1_500_000, **kw: object) -> VmSpec:
    npages = 8192
    return VmSpec(
        "vm1",
        workload,
        npages,
        npages * PAGE_SIZE // 4,
        npages * PAGE_SIZE,
        2,
        accesses,
        seed=1,
        **kw,  # type: ignore[arg-type]
    )


def test_oracle_policy_beats_first_touch_and_a_random_static_placement() -> None:
    rows = {
        p: run_scenario([_spec()], make_policy(p), epoch_s=0.01, seed=1).rows[0]
        for p in ("none", "oracle")
    }
    oracle = rows["oracle"]
    assert float(str(oracle["hit_vs_oracle"])) >= 0.99
    assert float(str(oracle["fast_hit_ratio"])) > float(
        str(rows["none"]["fast_hit_ratio"])
    )
    # a random static placement of the same size
    rng = np.random.default_rng(0)
    from emu.workloads import make_workload

    rates = make_workload("kv-zipf", 8192, seed=1001).rates()
    pick = rng.choice(8192, 2048, replace=False)
    assert float(str(oracle["fast_hit_ratio"])) > rates[pick].sum()


def test_hit_vs_oracle_is_hit_over_the_oracle_hit() -> None:
    (row,) = run_scenario([_spec()], make_policy("none"), epoch_s=0.01, seed=1).rows
    hit, oracle = float(str(row["fast_hit_ratio"])), float(str(row["oracle_hit"]))
    assert float(str(row["hit_vs_oracle"])) == pytest.approx(hit / oracle, abs=1e-4)
    assert 0 < hit < oracle <= 1


def test_all_fast_has_an_oracle_of_one() -> None:
    (row,) = run_scenario([_spec()], make_policy("all-fast"), epoch_s=0.01).rows
    assert row["oracle_hit"] == 1.0


def test_phase_oracle_re_places_after_a_phase_change() -> None:
    spec = _spec("gups", accesses=3_000_000, phase_change_at_s=0.015)
    rows = {
        p: run_scenario([spec], make_policy(p), epoch_s=0.005, seed=1).rows[0]
        for p in ("oracle", "oracle-phase")
    }
    assert float(str(rows["oracle-phase"]["fast_hit_ratio"])) > float(
        str(rows["oracle"]["fast_hit_ratio"])
    )
    # one phase change: one convergence time, reached by the phase oracle
    (t90,) = rows["oracle-phase"]["t90_phase_s"]  # type: ignore[misc]
    assert t90 is not None
    assert t90 <= 0.01


def test_convergence_and_steady_state_follow_their_definitions() -> None:
    class _Proc:
        def __init__(self) -> None:
            self.npages = 4
            self.phase_counts = {
                0: np.array([90, 10, 0, 0]),
                1: np.array([0, 0, 10, 90]),
            }

    series = {
        "t_s": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "fast_hit_ratio": [0.2, 0.95, 0.9, 0.0, 0.5, 0.9],
        "accesses": [10, 10, 10, 10, 30, 30],
        "phase": [0, 0, 0, 1, 1, 1],
    }
    m = oracle_metrics(_Proc(), 1, 0.6, series)  # type: ignore[arg-type]
    # static oracle: page 0 or 3 (90 of 200 accesses); per phase 0.9 each
    assert m["oracle_hit"] == pytest.approx(0.45)
    assert m["oracle_phase_hit"] == pytest.approx(0.9)
    assert m["t90_s"] == pytest.approx(0.2)  # first epoch >= 0.81
    assert m["t90_phase_s"] == [pytest.approx(0.3)]  # from 0.3 to 0.6
    # steady state: epochs after half the run (t > 0.3), weighted by accesses
    assert m["hit_ss"] == pytest.approx((0 * 10 + 0.5 * 30 + 0.9 * 30) / 70)
    # throughput over the steady window: 70 accesses from t=0.3 to t=0.6
    assert m["maccess_s_ss"] == pytest.approx(70 / 0.3 * 1e-6, abs=1e-6)
    assert m["t90_change_s"] == pytest.approx(0.3)
    assert m["changes_unconverged"] == 0
    series["fast_hit_ratio"] = [0.2, 0.95, 0.9, 0.0, 0.5, 0.5]  # never again
    m = oracle_metrics(_Proc(), 1, 0.5, series)  # type: ignore[arg-type]
    assert m["t90_change_s"] is None
    assert m["changes_unconverged"] == 1


def test_the_default_preset_runs_traces_longer() -> None:
    from emu.evaluation.compare import PRESETS, cells_of
    from emu.workloads.trace import shipped_traces

    m = PRESETS["default"]
    assert m.trace_accesses is not None
    assert m.trace_accesses > m.accesses
    cells = cells_of(m)
    for c in cells:
        want = m.trace_accesses if c.workload.startswith("trace:") else m.accesses
        assert c.accesses == want
    # every shipped trace and the oracle yardstick are in the default matrix
    assert {f"trace:{t}" for t in shipped_traces()} <= {c.workload for c in cells}
    assert "oracle" in m.policies


def test_run_report_shows_hit_vs_oracle_per_vm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli_main(
        ["run", "--workload", "gups", "--scale", "0.05", "--fast-fraction", "0.125",
         "--accesses", "300000", "--policies", "none,oracle", "--no-plots",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    assert "hit/oracle" in table
    doc = json.loads((tmp_path / "report.json").read_text())
    rows = {r["policy"]: r for r in doc["rows"]}
    assert rows["oracle"]["hit_vs_oracle"] >= 0.98
    assert rows["none"]["hit_vs_oracle"] < rows["oracle"]["hit_vs_oracle"]
    assert doc["meta"]["fast_fraction"] == 0.125
    assert rows["none"]["elapsed_s"] is not None


def test_run_replays_a_trace_for_the_misses_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    acc = np.concatenate([np.arange(2048), rng.integers(0, 300, 100_000)])
    Trace(np.arange(2048, dtype=np.uint64), acc.astype(np.uint32)).save(
        tmp_path / "t.npz"
    )
    rc = cli_main(
        ["run", "--workload", f"trace:{tmp_path / 't.npz'}", "--policies", "none",
         "--no-plots", "--json", "--out", str(tmp_path), "--accesses", "250000"]
    )  # fmt: skip
    assert rc == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["workload"] == f"trace:{tmp_path / 't.npz'}"
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["runs"][0]["accesses"] == 250_000  # 2.4 passes: it wraps around


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_run_replays_a_trace_as_long_as_the_default_comparison(
    tmp_path: Path, scale: float
) -> None:
    """One pass of a trace may last tens of emulated ms, in which no policy can
    pay a migration back: by default ``run`` replays it as ``compare`` does."""
    Trace(np.arange(64, dtype=np.uint64), np.arange(64, dtype=np.uint32)).save(
        tmp_path / "t.npz"
    )
    parser = argparse.ArgumentParser()
    cmd_run.add_arguments(parser)
    args = parser.parse_args(
        ["--workload", f"trace:{tmp_path / 't.npz'}", "--scale", str(scale)]
    )
    want = PRESETS["default"].trace_accesses
    assert want is not None
    assert cmd_run._one_vm(args).total_accesses == int(want * scale)
    gups = parser.parse_args(["--workload", "gups", "--scale", str(scale)])
    assert cmd_run._one_vm(gups).total_accesses == int(60_000_000 * scale)


def test_compare_cells_report_hit_vs_oracle() -> None:
    cell = Cell("kv-zipf", "none", "cxl", 4, 1, 4096, 400_000, 0.01, 10.0, 1)
    res = run_cell(cell)
    (row,) = res["rows"]  # type: ignore[misc]
    assert 0 < row["hit_vs_oracle"] < 1
    (summary,) = summarize(res["rows"])  # type: ignore[arg-type]
    assert summary["hit_vs_oracle"] == row["hit_vs_oracle"]
    assert "hit/oracle" in format_cells([summary], ["none"])
