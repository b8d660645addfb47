"""Unit tests of agent_host.channel: validation, rate limit and throttling."""

from __future__ import annotations

import json

import pytest

import hypertier_wire as wire
from agent_host.channel import GuestChannel
from agent_host.config import ChannelConfig

GiB = 1 << 30
LIMITS = {"fast": 8 * GiB, "slow": 8 * GiB}
CFG = ChannelConfig(max_msgs_per_s=10.0, burst_msgs=5, max_invalid=3, throttle_s=60.0)


def _report(seq: int, hot: int = GiB, used: int = GiB) -> bytes:
    return wire.encode(
        wire.Report(
            seq=seq,
            nodes=(
                wire.NodeUsage(0, "fast", 4 * GiB, used),
                wire.NodeUsage(1, "slow", 4 * GiB, 0),
            ),
            hot_bytes=hot,
            pressure=0.5,
        )
    )


def test_valid_report_becomes_latest() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(_report(1), 10.0, LIMITS)
    assert chan.latest is not None
    assert chan.latest.report.seq == 1
    assert chan.latest.used_bytes == 1 * GiB
    assert chan.latest.received_s == 10.0


def test_report_split_across_reads_is_reassembled() -> None:
    chan = GuestChannel("vm1", CFG)
    line = _report(1)
    chan.feed(line[:10], 1.0, LIMITS)
    assert chan.latest is None
    chan.feed(line[10:], 1.0, LIMITS)
    assert chan.latest is not None


def test_hello_is_answered() -> None:
    chan = GuestChannel("vm1", CFG)
    assert chan.feed(wire.encode(wire.Hello("hypertier-guest", "0.1")), 0.0, LIMITS)
    assert chan.hello == wire.Hello("hypertier-guest", "0.1")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"not json\n", id="garbage"),
        pytest.param(wire.encode(wire.Allot(1, 0, 0)), id="allot-from-guest"),
        pytest.param(_report(1, hot=100 * GiB), id="hot-beyond-memory"),
        pytest.param(
            json.dumps({"v": 2, "type": "hello"}).encode() + b"\n", id="version"
        ),
    ],
)
def test_invalid_message_is_counted(line: bytes) -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(line, 0.0, LIMITS)
    assert chan.invalid == 1
    assert chan.latest is None
    assert chan.last_error


def test_report_beyond_provisioned_memory_is_invalid() -> None:
    chan = GuestChannel("vm1", CFG)
    huge = wire.Report(
        seq=1,
        nodes=(wire.NodeUsage(0, "fast", 1 << 49, 0),),
        hot_bytes=0,
        pressure=0.0,
    )
    chan.feed(wire.encode(huge), 0.0, {"fast": GiB, "slow": GiB})
    assert chan.invalid == 1


def test_replayed_seq_is_invalid() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(_report(5) + _report(5), 0.0, LIMITS)
    assert chan.invalid == 1
    assert chan.messages == 1


def test_duplicate_node_is_invalid() -> None:
    chan = GuestChannel("vm1", CFG)
    rep = wire.Report(
        seq=1,
        nodes=(wire.NodeUsage(0, "fast", GiB, 0), wire.NodeUsage(0, "fast", GiB, 0)),
        hot_bytes=0,
        pressure=0.0,
    )
    chan.feed(wire.encode(rep), 0.0, LIMITS)
    assert chan.invalid == 1


def test_burst_above_rate_is_limited_then_throttled() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(b"".join(_report(i) for i in range(1, 20)), 0.0, LIMITS)
    assert chan.messages == 5
    assert chan.rate_limited == 14  # counted in bulk, not decoded
    assert chan.throttled(1.0)
    assert chan.throttle_count == 1


def test_rate_refills_with_time() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(b"".join(_report(i) for i in range(1, 6)), 0.0, LIMITS)
    chan.feed(_report(6), 0.5, LIMITS)
    assert chan.messages == 6
    assert chan.rate_limited == 0


def test_throttled_guest_is_ignored_and_loses_its_report() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(_report(1), 0.0, LIMITS)
    chan.feed(b"x\n" * 3, 1.0, LIMITS)
    assert chan.throttled(2.0)
    assert chan.latest is None
    chan.feed(_report(2), 2.0, LIMITS)
    assert chan.latest is None


def test_throttle_expires() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(b"x\n" * 3, 0.0, LIMITS)
    chan.feed(_report(1), 61.0, LIMITS)
    assert chan.latest is not None


def test_endless_line_costs_bounded_memory_and_counts_invalid() -> None:
    chan = GuestChannel("vm1", CFG)
    for _ in range(100):  # each within the per-tick byte budget
        chan.feed(b"a" * CFG.max_bytes_per_tick, 0.0, LIMITS)
    chan.feed(b"\n" + _report(1), 0.0, LIMITS)
    assert chan.invalid == 1
    assert chan.dropped_lines == 1
    assert chan.latest is not None


def test_reconfigure_caps_tokens() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.reconfigure(ChannelConfig(max_msgs_per_s=1.0, burst_msgs=1, max_invalid=99))
    chan.feed(_report(1) + _report(2), 0.0, LIMITS)
    assert chan.messages == 1
