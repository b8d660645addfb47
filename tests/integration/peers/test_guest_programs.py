"""The guest-side workload programs, built and run on this host's real kernel.

On a host with one memory node every page is on node 0, so each pattern must
report a hot-set and whole-mapping fraction of exactly 1.0: a program that
misreads move_pages(2) or counts the wrong pages fails here. Needs gcc and
libc6-dev (static libc.a); installed by scripts/setup.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.peers.hostrun import (
    assert_usage_error,
    build_or_skip,
    json_records,
)
from tests.integration.peers.programs import (
    BuildError,
    build_guest_programs,
    parse_json_lines,
)

pytestmark = pytest.mark.integration

NODE_ONLINE = Path("/sys/devices/system/node/has_memory")


def _memory_nodes() -> str:
    return NODE_ONLINE.read_text().strip() if NODE_ONLINE.is_file() else "0"


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_or_skip(tmp_path_factory.mktemp("cache"), "ht-workload")


def _run(binary: Path, *args: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    return json_records([binary, *args], timeout_s)


@pytest.fixture
def one_node() -> None:
    if _memory_nodes() != "0":
        pytest.skip(
            f"memory nodes {_memory_nodes()}: the fraction-is-1.0 check needs a "
            "host whose only memory node is 0"
        )


SMALL = ("--total-mib", "24", "--hot-mib", "4", "--interval-s", "0.5")


@pytest.mark.usefixtures("one_node")
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["slow-hot", "--hot-node", "0"], id="slow-hot"),
        pytest.param(["shift", "--shift-at-s", "0.6", "--b-node", "0"], id="shift"),
        pytest.param(["scan", "--hot-node", "0", "--scan-period-s", "0.3"], id="scan"),
        pytest.param(["large", "--hot-mib", "20"], id="large"),
    ],
)
def test_every_page_is_on_node0_of_a_one_node_host(
    workload: Path, args: list[str]
) -> None:
    records = _run(workload, *args[:1], *SMALL, *args[1:], "--duration-s", "1.6")
    start, *samples, end = records
    assert start["type"] == "start"
    assert start["pattern"] == args[0]
    assert [r["type"] for r in samples] == ["sample"] * len(samples)
    assert end["type"] == "end"
    assert len(samples) >= 2
    for record in [*samples, end]:
        assert record["hot_node0_frac"] == 1.0
        assert record["all_node0_frac"] == 1.0
        assert record["hot_node0_pages"] == start["hot_pages"]
        assert record["all_node0_pages"] == start["total_pages"]
        assert record["ops_per_s"] > 0


def test_report_times_increase_by_the_interval(workload: Path) -> None:
    records = _run(workload, "large", *SMALL, "--duration-s", "2.2")
    times = [r["t_s"] for r in records[1:]]
    assert times == sorted(times)
    assert times[0] == pytest.approx(0.5, abs=0.3)
    assert times[-1] == pytest.approx(2.2, abs=0.3)
    assert records[-1]["reports"] == len(records) - 1


def test_page_counts_follow_the_sizes(workload: Path) -> None:
    start = _run(workload, "shift", *SMALL, "--b-node", "0", "--duration-s", "0.1")[0]
    assert start["page_size"] == 4096
    assert start["total_pages"] == 24 * 256
    assert start["hot_pages"] == start["b_pages"] == 4 * 256
    assert start["cold_pages"] == (24 - 8) * 256


def test_shift_moves_the_hot_set_from_a_to_b(workload: Path) -> None:
    records = _run(
        workload, "shift", *SMALL, "--b-node", "0", "--shift-at-s", "1.0",
        "--duration-s", "2.0",
    )  # fmt: skip
    regions = [(r["t_s"], r["hot_region"]) for r in records[1:]]
    assert all(region == "A" for t, region in regions if t < 0.95)
    assert all(region == "B" for t, region in regions if t > 1.05)
    assert records[-1]["old_hot_node0_frac"] >= 0.0


def test_scan_reads_every_cold_page_each_period(workload: Path) -> None:
    end = _run(
        workload, "scan", *SMALL, "--hot-node", "0", "--scan-period-s", "0.5",
        "--duration-s", "2.1",
    )[-1]  # fmt: skip
    assert end["scans"] >= 3
    assert end["scan_pages"] == end["scans"] * (24 - 4) * 256


def test_ops_cap_holds_the_touch_rate(workload: Path) -> None:
    records = _run(
        workload, "large", *SMALL, "--ops-per-s", "100000", "--duration-s", "2.0"
    )
    rates = [r["ops_per_s"] for r in records[1:-1]]
    assert rates
    assert max(rates) <= 100000 * 1.2


def test_bind_to_a_missing_node_fails_and_names_it(workload: Path) -> None:
    proc = subprocess.run(
        [str(workload), "slow-hot", *SMALL, "--hot-node", "63"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "node 63" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "missing PATTERN", id="no-pattern"),
        pytest.param(["zigzag"], "PATTERN must be", id="bad-pattern"),
        pytest.param(["large", "--hot-mib", "x"], "--hot-mib must be", id="bad-number"),
        pytest.param(
            ["shift", "--total-mib", "8", "--hot-mib", "6"], "twice", id="small"
        ),
        pytest.param(["large", "--order", "random"], "--order", id="bad-order"),
        pytest.param(["large", "--hot-node", "fast"], "node must be", id="bad-node"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    workload: Path, args: list[str], message: str
) -> None:
    assert_usage_error([workload, *args], message)


def test_help_names_every_pattern(workload: Path) -> None:
    out = subprocess.run(
        [str(workload), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for pattern in ("slow-hot", "shift", "scan", "large"):
        assert pattern in out


def test_build_is_reused_from_the_cache(tmp_path: Path) -> None:
    try:
        first = build_guest_programs(tmp_path, ["ht-workload"])["ht-workload"]
    except BuildError as err:
        pytest.skip(f"cannot build ht-workload: {err}")
    mtime = first.stat().st_mtime_ns
    again = build_guest_programs(tmp_path, ["ht-workload"])["ht-workload"]
    assert again == first
    assert again.stat().st_mtime_ns == mtime


def test_unknown_program_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown guest programs"):
        build_guest_programs(tmp_path, ["ht-nothing"])


def test_parse_json_lines_names_the_bad_line() -> None:
    with pytest.raises(ValueError, match="line 2: not JSON"):
        list(parse_json_lines('{"a": 1}\n{"b": \n'))


def test_parse_json_lines_rejects_non_objects() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        list(parse_json_lines("[1, 2]\n"))


def test_parse_json_lines_skips_blank_lines() -> None:
    assert list(parse_json_lines(['{"a": 1}', "", '{"b": 2}'])) == [{"a": 1}, {"b": 2}]


def test_all_every_queries_the_whole_mapping_every_nth_report(workload: Path) -> None:
    records = _run(workload, "large", *SMALL, "--all-every", "2", "--duration-s", "2.2")
    measured = [r["all_measured"] for r in records[1:]]
    assert measured[:4] == [True, False, True, False]
    assert measured[-1] is True  # the end line always measures
