"""The probe's console parsing (pure): what the guest script prints, read back."""

from __future__ import annotations

import pytest

from tests.integration.peers.probe import summarize

CONSOLE = """\
[    2.1] some kernel line
HT-TIER memory_tier4 0
HT-TIER memory_tier45 1
HT-RC 0
HT-BEGIN w
{"type":"start","pattern":"slow-hot","pid":231}
{"type":"sample","t_s":1.0,"hot_node0_frac":0.25}
{"type":"end","t_s":2.0,"hot_node0_frac":0.5,"ops":10}
HT-END w
HT-BEGIN c
{"type": "start", "pid": 233}
{"type": "end", "t_s": 2.0, "vmstat": {"pgpromote_success": 7, "numa_hit": 0},
HT-END c
"""


def test_summary_reads_tiers_series_and_counters() -> None:
    console = CONSOLE.replace(
        '"numa_hit": 0},\n',
        '"numa_hit": 0}, "cpu_s": {"kswapd": {"user_s": 0.0, "sys_s": 0.5}}, '
        '"tlb_flush": {"task_switch": 3}}\n',
    )
    s = summarize(console)
    assert s["tiers"] == {"memory_tier4": "0", "memory_tier45": "1"}
    assert s["rc"] == 0
    assert s["hot_node0_frac"] == [(1.0, 0.25), (2.0, 0.5)]
    assert s["workload_end"]["ops"] == 10
    assert s["vmstat"] == {"pgpromote_success": 7}
    assert s["cpu_s"] == {"kswapd": {"user_s": 0.0, "sys_s": 0.5}}
    assert s["tlb_flush"] == {"task_switch": 3}


def test_a_missing_section_says_which() -> None:
    with pytest.raises(SystemExit, match="no c output"):
        summarize(CONSOLE.split("HT-BEGIN c")[0])


KV_CONSOLE = """\
HT-BEGIN w
{"type":"start","keys":100,"populated":true}
{"type":"sample","t_s":1.0,"ops_per_s":900.0,"lat_p99_us":800}
{"type":"end","t_s":2.0,"ops_per_s":1000.0,"lat_p99_us":700}
HT-END w
HT-BEGIN c
{"type": "start", "pid": 233}
{"type": "sample", "t_s": 1.0, "numa_kib": {"redis": {"0": 10, "1": 30}}}
{"type": "end", "t_s": 2.0, "numa_kib": {"redis": {"0": 20, "1": 20}}}
HT-END c
"""


def test_kv_summary_has_throughput_latency_and_memory_per_node() -> None:
    s = summarize(KV_CONSOLE)
    assert s["ops_per_s"] == [(1.0, 900.0), (2.0, 1000.0)]
    assert s["lat_p99_us"] == [(1.0, 800), (2.0, 700)]
    assert s["numa_kib"][-1] == (2.0, {"redis": {"0": 20, "1": 20}})
    assert s["workload_start"]["keys"] == 100
    assert "hot_node0_frac" not in s
