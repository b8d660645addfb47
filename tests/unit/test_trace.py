"""Recorded traces: the LLC filter, the lackey parser, the file format, replay."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.evaluation.cli import main as cli_main
from emu.evaluation.compare import Matrix, cells_of, specs_of
from emu.evaluation.runner import run_scenario
from emu.machine import FAST, PAGE_SIZE, World
from emu.policies import VmSpec, make_policy
from emu.workloads import make_workload
from emu.workloads.lackey import LackeyParser
from emu.workloads.trace import (
    SHIPPED_DIR,
    LlcFilter,
    PageNumbering,
    Trace,
    TraceWorkload,
    load_trace,
    shipped_traces,
)

MIB = 1 << 20
TRACES = SHIPPED_DIR


def _lru_misses(lines: list[int], nsets: int, ways: int) -> list[bool]:
    """Brute force: one OrderedDict per set, most recent last."""
    sets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(nsets)]
    out = []
    for x in lines:
        s = sets[x % nsets]
        if x in s:
            s.move_to_end(x)
            out.append(False)
        else:
            out.append(True)
            s[x] = None
            if len(s) > ways:
                s.popitem(last=False)
    return out


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.integers(0, 40), min_size=1, max_size=300),
    nsets=st.sampled_from([1, 2, 4, 3]),
    ways=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 300), max_size=4),
)
def test_llc_filter_matches_brute_force_lru(
    lines: list[int], nsets: int, ways: int, cuts: list[int]
) -> None:
    llc = LlcFilter(nsets * ways * 64, ways=ways)
    bounds = sorted({0, len(lines), *[c for c in cuts if c < len(lines)]})
    got = np.concatenate(
        [
            llc.access(np.array(lines[a:b], np.int64))
            for a, b in itertools.pairwise(bounds)
        ]
    )
    assert got.tolist() == _lru_misses(lines, nsets, ways)


def test_llc_filter_keeps_a_working_set_that_fits() -> None:
    llc = LlcFilter(MIB, ways=16)
    lines = np.tile(np.arange(1000), 5)
    assert int(llc.access(lines).sum()) == 1000


def test_page_numbering_is_first_touch_order_across_chunks() -> None:
    num = PageNumbering()
    a = num.number(np.array([50, 7, 50, 9], np.uint64))
    b = num.number(np.array([9, 3, 7, 100], np.uint64))
    assert a.tolist() == [0, 1, 0, 2]
    assert b.tolist() == [2, 3, 1, 4]
    assert num.all_pages().tolist() == [50, 7, 9, 3, 100]


LOG = b"""==1== Lackey, an example Valgrind tool
I  04001000,3
 L 1ffefff8a0,8
 S 0000402000,4
SYSCALL[1,1](0) sys_read ( 3, 0x405000, 4096 ) --> [async] ...
SYSCALL[1,1](0) ... [async] --> Success(0x80)
 M 0000402010,4
SYSCALL[1,1](257) sys_openat ( 4294967196, 0x4034bb0(/dev/null), 0 ) --> [async] ...
SYSCALL[1,1](17) sys_pread64 ( 4, 0x407000, 64, 0 )[sync] --> Success(0x40)
 L 0000403000,8
"""


@pytest.mark.parametrize("split", [5, 37, 100, len(LOG)], ids=lambda n: f"split{n}")
def test_lackey_parser_reads_accesses_kernel_writes_and_marks(split: int) -> None:
    p = LackeyParser(marker_path="/dev/null")
    blocks = [p.feed(LOG[:split]), p.feed(LOG[split:]), p.finish()]
    addrs = np.concatenate([b.addrs for b in blocks]).tolist()
    stores = np.concatenate([b.stores for b in blocks]).tolist()
    assert addrs == [
        0x1FFEFFF8A0,
        0x402000,
        0x405000,  # read(2) of 0x80 bytes: two lines the kernel wrote
        0x405040,
        0x402010,
        0x407000,  # pread64(2) of one line
        0x403000,
    ]
    assert stores == [False, True, True, True, True, True, False]
    offsets = [sum(len(b.addrs) for b in blocks[:i]) + m for i, b in
               enumerate(blocks) for m in b.marks]  # fmt: skip
    assert offsets == [5]
    assert p.kernel_bytes == 3 * 64


# valgrind 3.19's lines, as lackey wrote them for `sh -c 'ls; exec /usr/bin/seq'`
# under --child-silent-after-fork=yes: the forks' notes, a failed and a successful
# execve (its line never ends: the process image that would end it is gone)
FORK_EXEC_LOG = (
    b" L 1ffefff8a0,8\n"
    b"SYSCALL[9097,1](58) sys_fork ( )   fork: process 9097 created child 9098\n"
    b"SYSCALL[8754,1](56) sys_clone ( 1200011, 0x0, 0x0, 0x4b53590, 0x0 )   "
    b"clone(fork): process 8754 created child 8876\n"
    b"SYSCALL[8754,1](56) sys_clone ( 3d0f00, 0x5610f70, 0x5611990, 0x5611990, "
    b"0x56116c0 ) --> [pre-success] Success(0x22ab) \n"
    b" S 0000402000,4\n"
    b"SYSCALL[9097,1](59) sys_execve ( 0x4035c68(/root/bin/seq), 0x129998, "
    b"0x4035b28 ) --> [pre-fail] Failure(0x2) \n"
    b" L 0000403000,8\n"
    b"SYSCALL[9097,1](59) sys_execve ( 0x4035c50(/usr/bin/seq), 0x4035d48, "
    b"0x4035d88 )"
)


@pytest.mark.parametrize("split", [0, 40, 200, 395, len(FORK_EXEC_LOG)])
def test_lackey_parser_notes_children_and_a_successful_exec(split: int) -> None:
    p = LackeyParser()
    p.feed(FORK_EXEC_LOG[:split])
    p.feed(FORK_EXEC_LOG[split:])
    # a thread (clone with CLONE_THREAD) is no child; a failed execve no exec
    assert p.children == [9098, 8876]
    assert p.exec_pending() == "/usr/bin/seq"
    p.finish()
    assert p.exec_path == "/usr/bin/seq"
    assert p.accesses == 3


@pytest.mark.parametrize(
    "after",
    [b" L 0000404000,8\n", b"SYSCALL[9097,1](231) exit_group( 0 ) --> Success(0x0)\n"],
    ids=["access", "syscall"],
)
def test_lackey_parser_takes_back_an_exec_the_process_outlived(after: bytes) -> None:
    p = LackeyParser()
    p.feed(FORK_EXEC_LOG + b"\n")
    assert p.exec_path == "/usr/bin/seq"
    p.feed(after)
    p.finish()
    assert p.exec_path is None


def _trace(n: int = 50_000, npages: int = 2048, phases: bool = True) -> Trace:
    rng = np.random.default_rng(3)
    # first-touch order: page i first appears before page i + 1
    acc = np.concatenate([np.arange(npages), rng.integers(0, npages // 4, n)])
    return Trace(
        pages=np.arange(npages, dtype=np.uint64) + 1000,
        accesses=acc.astype(np.uint32),
        writes=rng.random(len(acc)) < 0.3,
        phases=np.array([npages], np.int64) if phases else np.empty(0, np.int64),
        meta={"program": "synthetic"},
    )


def test_trace_file_round_trip(tmp_path: Path) -> None:
    tr = _trace()
    tr.save(tmp_path / "t.npz")
    back = load_trace(tmp_path / "t.npz")
    assert np.array_equal(back.pages, tr.pages)
    assert np.array_equal(back.accesses, tr.accesses)
    assert back.writes is not None
    assert tr.writes is not None
    assert np.array_equal(back.writes, tr.writes)
    assert back.phases.tolist() == tr.phases.tolist()
    assert back.meta["program"] == "synthetic"


def test_trace_rejects_a_file_of_another_format(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", a=np.arange(3))
    with pytest.raises(ValueError, match="not a hypertier-trace"):
        load_trace(tmp_path / "x.npz")


def test_replay_follows_recorded_order_and_wraps() -> None:
    tr = _trace(n=100)
    wl = TraceWorkload(tr)
    n = len(tr.accesses)
    first = wl.generate(n - 10)
    rest = wl.generate(20)
    assert first.tolist() == tr.accesses[: n - 10].tolist()
    assert rest.tolist() == [*tr.accesses[n - 10 :], *tr.accesses[:10]]
    assert wl.phase == 0  # wrapped into the first phase again


def test_replay_reports_the_phase_and_store_flags() -> None:
    tr = _trace()
    wl = TraceWorkload(tr)
    wl.generate(100)
    assert wl.phase == 0
    wl.generate(tr.npages)
    assert wl.phase == 1
    w = wl.last_writes()
    assert w is not None
    assert tr.writes is not None
    assert w.tolist() == tr.writes[100 : 100 + tr.npages].tolist()


def test_trace_pages_are_allocated_at_first_touch_in_order() -> None:
    tr = _trace()
    world = World(64 * MIB, 256 * MIB)
    world.add_vm("vm", 2, 4 * MIB, 16 * MIB)
    wl = TraceWorkload(tr)
    pid = world.spawn("vm", wl, 10**9, prefault=wl.prefault)
    proc = world.process("vm", pid)
    assert not (proc.pt >= 0).any()
    world.clock.advance(1e-5)
    present = np.flatnonzero(proc.pt >= 0)
    assert present.tolist() == list(range(len(present)))
    # first touch fills the fast node with the pages touched first
    tiers = world.page_tiers("vm", pid)
    fast = np.flatnonzero(tiers == FAST)
    assert fast.tolist() == list(range(len(fast)))


def test_recorded_store_flags_drive_dirty_logging() -> None:
    n = 2048
    acc = np.tile(np.arange(n), 20).astype(np.uint32)
    writes = (acc % 2 == 0) & (acc < 100)
    tr = Trace(np.arange(n, dtype=np.uint64), acc, writes)
    world = World(64 * MIB, 256 * MIB)
    world.add_vm("vm", 2, 8 * MIB, 16 * MIB)
    pid = world.spawn("vm", TraceWorkload(tr), 10**9)
    world.pml_drain("vm")
    world.clock.advance(1e-3)
    proc = world.process("vm", pid)
    logged = set(world.pml_drain("vm").tolist())
    assert logged == set(proc.pt[np.arange(0, 100, 2)].tolist())


def _trace_specs(tmp_path: Path, fast_fraction: float = 0.25) -> list[VmSpec]:
    tr = _trace(n=400_000)
    tr.save(tmp_path / "t.npz")
    fast = int(tr.npages * PAGE_SIZE * fast_fraction)
    spec = f"trace:{tmp_path / 't.npz'}"
    return [VmSpec("vm1", spec, tr.npages, fast, tr.npages * PAGE_SIZE, 2, 800_000)]


@pytest.mark.parametrize("policy", ["none", "memtis"])
def test_trace_replay_is_deterministic(tmp_path: Path, policy: str) -> None:
    specs = _trace_specs(tmp_path)
    a = run_scenario(specs, make_policy(policy), epoch_s=0.002, seed=1)
    b = run_scenario(specs, make_policy(policy), epoch_s=0.002, seed=1)
    assert a.rows == b.rows
    assert a.series == b.series


def test_address_layout_puts_pages_in_recorded_address_order() -> None:
    # pages first touched in the order of addresses 30, 10, 20 (x 4 KiB)
    tr = Trace(np.array([30, 10, 20], np.uint64), np.array([0, 1, 2, 0], np.uint32))
    assert TraceWorkload(tr).generate(4).tolist() == [0, 1, 2, 0]
    assert TraceWorkload(tr, layout="address").generate(4).tolist() == [2, 0, 1, 2]
    with pytest.raises(ValueError, match="layout 'vpn' not one of"):
        TraceWorkload(tr, layout="vpn")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_address_layout_moves_pages_not_what_first_touch_and_the_oracle_see(
    seed: int,
) -> None:
    """The layout only renames pages: first touch (allocation in access order)
    and the oracle (counts per page) give the same run under both."""
    rng = np.random.default_rng(seed)
    npages = 4096  # 16 MiB: a fast tier of 4 MiB, two blocks
    acc = np.concatenate([np.arange(npages), rng.zipf(1.2, 40_000) % npages])
    tr = Trace(rng.permutation(npages).astype(np.uint64) * 7, acc.astype(np.uint32))
    fast = npages * PAGE_SIZE // 4
    for policy in ("none", "oracle"):
        rows = [
            run_scenario(
                [VmSpec("vm1", TraceWorkload(tr, layout=lay), npages, fast,
                        npages * PAGE_SIZE, 2, 80_000)],
                make_policy(policy),
                epoch_s=0.002,
                seed=1,
            ).rows[0]
            for lay in ("touch", "address")
        ]  # fmt: skip
        assert rows[0]["fast_hit_ratio"] != 1.0  # the fast tier is contended
        for key in ("elapsed_s", "fast_hit_ratio", "oracle_hit"):
            assert rows[0][key] == rows[1][key], (policy, key)


def test_run_replays_a_trace_in_address_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _trace(n=20_000).save(tmp_path / "t.npz")
    argv = [
        "run",
        "--workload",
        f"trace:{tmp_path / 't.npz'}",
        "--policies",
        "none",
        "--no-plots",
        "--out",
        str(tmp_path / "out"),
        "--accesses",
        "100000",
        "--trace-layout",
    ]
    assert cli_main([*argv, "address"]) == 0
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["meta"]["trace_layout"] == "address"
    with pytest.raises(SystemExit):
        cli_main([*argv, "vpn"])
    assert "trace layout 'vpn' is not one of touch, address" in capsys.readouterr().err


def test_compare_cells_carry_the_trace_layout() -> None:
    m = Matrix(("trace:sqlite-kv", "gups"), ("none",), ("cxl",), (4,), (1,))
    for layout in ("touch", "address"):
        specs = [
            s for c in cells_of(replace(m, trace_layout=layout)) for s in specs_of(c)
        ]
        assert [s.trace_layout for s in specs] == [layout, layout]


def test_workload_spec_may_be_an_instance() -> None:
    wl = make_workload("gups", 4096, seed=1)
    assert make_workload(wl) is wl
    spec = VmSpec("vm1", wl, 4096, 4 * MIB, 16 * MIB, 2, 200_000)
    (row,) = run_scenario([spec], make_policy("none"), epoch_s=0.01).rows
    assert row["workload"] == "gups"


def test_unknown_workload_names_the_trace_form() -> None:
    with pytest.raises(ValueError, match="trace:FILE"):
        make_workload("nope", 4096)


def test_missing_trace_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.npz"):
        make_workload(f"trace:{tmp_path / 'nope.npz'}")


@pytest.mark.parametrize("name", ["redis-set-get", "sqlite-kv"])
def test_shipped_trace_loads_with_its_command_line(name: str) -> None:
    tr = load_trace(TRACES / f"{name}.npz")
    assert tr.meta["argv"]
    assert len(tr.phases) >= 1
    assert tr.npages >= 1024
    assert (TRACES / f"{name}.npz").stat().st_size < 8 * MIB
    assert name in shipped_traces()
    wl = make_workload(f"trace:{name}")  # by name, from the installed package
    assert wl.name == f"trace:{name}"
    assert wl.npages == tr.npages


needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None,
    reason="valgrind is not installed (apt-get install valgrind; scripts/setup does)",
)


@pytest.mark.slow
@needs_valgrind
def test_record_a_real_program_round_trip(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("".join(f"{(i * 7919) % 1000}\n" for i in range(300)))
    out = tmp_path / "sort.npz"
    rc = cli_main(
        ["trace", "record", "--cache-mib", "0.25", "--ways", "8", "-o", str(out),
         "--", "sort", "-o", str(tmp_path / "sorted.txt"), str(words)]
    )  # fmt: skip
    assert rc == 0
    tr = load_trace(out)
    assert tr.meta["argv"][0] == "sort"
    assert tr.meta["llc"] == {
        "size_bytes": MIB // 4,
        "ways": 8,
        "line_bytes": 64,
        "policy": "LRU",
    }
    # sort read the file with read(2): the kernel's stores are in the trace
    assert int(str(tr.meta["kernel_write_bytes"])) >= words.stat().st_size
    # page indices are in first-touch order
    first = np.unique(tr.accesses, return_index=True)[1]
    assert np.all(np.diff(first) > 0)
    assert (tmp_path / "sorted.txt").read_text().splitlines() == sorted(
        words.read_text().splitlines()
    )


@pytest.mark.slow
@needs_valgrind
def test_record_stops_the_program_after_max_accesses(tmp_path: Path) -> None:
    out = tmp_path / "yes.npz"
    rc = cli_main(
        ["trace", "record", "--max-accesses", "200000", "-o", str(out), "--",
         "sh", "-c", "while :; do :; done"]
    )  # fmt: skip
    assert rc == 0
    assert int(str(load_trace(out).meta["raw_accesses"])) >= 200_000


@pytest.mark.slow
@needs_valgrind
def test_opening_the_marker_path_starts_a_phase(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("b\na\n")
    out = tmp_path / "sort.npz"
    rc = cli_main(
        ["trace", "record", "-o", str(out), "--phase-on-open", str(words), "--",
         "sort", "-o", str(tmp_path / "sorted.txt"), str(words)]
    )  # fmt: skip
    assert rc == 0
    tr = load_trace(out)
    assert tr.meta["phase_marker_path"] == str(words)
    # start-up (the dynamic loader, locale) before sort opens its input, then the rest
    assert len(tr.segments) == 2


@pytest.mark.slow
@needs_valgrind
def test_clients_run_in_order_then_the_program_is_stopped(tmp_path: Path) -> None:
    out = tmp_path / "sleep.npz"
    log = tmp_path / "clients.log"
    rc = cli_main(
        ["trace", "record", "-o", str(out), "--client", f"echo 1 >> {log}",
         "--client", f"echo 2 >> {log}", "--", "sleep", "600"]
    )  # fmt: skip
    assert rc == 0
    assert log.read_text() == "1\n2\n"
    assert load_trace(out).meta["clients"] == [f"echo 1 >> {log}", f"echo 2 >> {log}"]


@needs_valgrind
def test_record_fails_when_the_port_never_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli_main(
        ["trace", "record", "-o", str(tmp_path / "x.npz"), "--wait-port", "1",
         "--wait-s", "0.3", "--client", "true", "--", "sleep", "600"]
    )  # fmt: skip
    assert rc == 1
    assert "port 1 did not open" in capsys.readouterr().err


def _record_sh(out: Path, script: str) -> int:
    """``hypertier trace record -o OUT -- sh -c SCRIPT``'s exit code."""
    return cli_main(["trace", "record", "-o", str(out), "--", "sh", "-c", script])


@pytest.mark.slow
@needs_valgrind
def test_record_counts_the_children_it_did_not_trace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "sh.npz"
    assert _record_sh(out, "seq 1 20000 | sort -r > /dev/null; true") == 0
    tr = load_trace(out)
    assert tr.meta["untraced_children"] == 2  # seq and sort: sh's children
    assert "2 child process(es)" in caplog.text
    # sort's 20,000 lines are not in the trace: sh's own start-up is (~80 k)
    assert int(str(tr.meta["raw_accesses"])) < 1_000_000


@pytest.mark.slow
@needs_valgrind
def test_record_refuses_a_program_that_execs_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.npz"
    assert _record_sh(out, "exec /bin/sleep 600") == 1
    err = capsys.readouterr().err
    assert "replaced itself with /bin/sleep" in err
    assert "ran untraced and was stopped" in err
    assert not out.exists()


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """The small test trace saved as ``t.npz``."""
    path = tmp_path / "t.npz"
    _trace().save(path)
    return path


def test_trace_info_prints_the_metadata(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["trace", "info", "--json", str(trace_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pages"] == 2048
    assert doc["phases"] == [2048, 50_000]
    assert cli_main(["trace", "info", str(trace_file)]) == 0
    assert "program" in capsys.readouterr().out


def test_verbose_flag_before_a_subcommand_keeps_it(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["-v", "trace", "info", str(trace_file)]) == 0
    assert "pages" in capsys.readouterr().out
