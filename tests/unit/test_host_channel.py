"""Unit tests of agent_host.channel and wire.LineReader: validation, byte budget,
rate limit, throttling, hello sessions, line splitting under any chunking."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hypertier_wire as wire
from agent_host.channel import GuestChannel
from agent_host.config import ChannelConfig, loads
from hypertier_common.errors import ConfigError

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


def test_blank_lines_are_counted_and_take_tokens() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(b"\n" * 3 + _report(1), 0.0, LIMITS)
    assert (chan.lines, chan.blank_lines, chan.messages) == (4, 3, 1)
    assert chan.invalid == 0
    chan.feed(b"\n" * 10, 0.0, LIMITS)  # one token left of the burst of 5
    assert chan.blank_lines == 4
    assert chan.rate_limited == 9
    assert chan.throttled(0.0)


def test_bytes_over_the_tick_budget_are_discarded_unread_and_strike() -> None:
    cfg = ChannelConfig(max_bytes_per_tick=4096, max_invalid=3, burst_msgs=5)
    chan = GuestChannel("vm1", cfg)
    data = _report(1) + b"x" * 8000 + b"\n" + _report(2)
    chan.feed(data, 0.0, LIMITS)
    assert chan.latest is not None
    assert chan.latest.report.seq == 1  # report 2 lay beyond the budget
    assert chan.bytes_discarded == len(data) - 4096
    assert chan.over_budget == 1
    assert chan.bytes_received == len(data)
    chan.feed(_report(3), 1.0, LIMITS)  # the stream resumes at a line start
    assert chan.latest.report.seq == 3


def test_cut_line_at_the_budget_is_skipped_to_its_newline() -> None:
    cfg = ChannelConfig(max_bytes_per_tick=4096, max_invalid=99)
    chan = GuestChannel("vm1", cfg)
    head, line = _report(1), _report(2)
    pad = b" " * (4096 - len(head) - 1 - 10) + b"\n"  # a blank line
    chan.feed(head + pad + line[:40], 0.0, LIMITS)  # cut 10 bytes into report 2
    chan.feed(line[40:] + _report(3), 10.0, LIMITS)
    assert chan.invalid == 0  # the torn report 2 is dropped, not misparsed
    assert chan.blank_lines == 1
    assert chan.latest is not None
    assert chan.latest.report.seq == 3


def test_flood_of_tiny_lines_is_counted_in_bulk_and_throttled() -> None:
    chan = GuestChannel("vm1", CFG)
    flood = b"\n" * 8000 + b"x\n" * 4000
    chan.feed(flood, 0.0, LIMITS)
    assert chan.lines == 12000
    assert chan.rate_limited == 12000 - CFG.burst_msgs
    assert chan.throttled(1.0)
    chan.feed(flood, 1.0, LIMITS)  # throttled: discarded without a look
    assert chan.bytes_discarded == len(flood)
    assert chan.lines == 12000


def test_guest_hello_starts_a_session_with_seq_from_one() -> None:
    chan = GuestChannel("vm1", CFG)
    hello = wire.encode(wire.Hello("hypertier-guest", "0.1"))
    chan.feed(hello + _report(500), 0.0, LIMITS)
    assert chan.feed(b"\n" + hello + _report(1), 10.0, LIMITS)
    assert chan.latest is not None
    assert chan.latest.report.seq == 1
    assert (chan.sessions, chan.invalid) == (2, 0)


def test_stale_partial_line_costs_one_strike_and_not_the_hello() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(_report(7)[:40], 0.0, LIMITS)  # the old agent died mid-line
    hello = wire.encode(wire.Hello("hypertier-guest", "0.1"))
    assert chan.feed(b"\n" + hello + _report(1), 1.0, LIMITS)
    assert chan.invalid == 1
    assert not chan.throttled(1.0)
    assert chan.latest is not None


def test_one_stale_line_per_restart_never_throttles() -> None:
    chan = GuestChannel("vm1", CFG)  # max_invalid 3 within throttle_s 60
    hello = wire.encode(wire.Hello("hypertier-guest", "0.1"))
    for day in range(10):
        t = day * 3600.0
        chan.feed(b'{"v":1,"type":"rep', t, LIMITS)
        chan.feed(b"\n" + hello + _report(1), t + 1.0, LIMITS)
    assert chan.invalid == 10
    assert chan.throttle_count == 0


def test_reconnect_discards_the_partial_line() -> None:
    chan = GuestChannel("vm1", CFG)
    chan.feed(b'{"v":1,"type":"hel', 0.0, LIMITS)
    chan.reconnected()
    assert chan.feed(wire.encode(wire.Hello("hypertier-guest", "0.1")), 1.0, LIMITS)
    assert chan.invalid == 0


@pytest.mark.parametrize(
    "value", [pytest.param(4095, id="below-a-line"), pytest.param(1 << 25, id="huge")]
)
def test_byte_budget_outside_its_range_is_a_config_error(value: int) -> None:
    with pytest.raises(ConfigError, match=r"channel\.max_bytes_per_tick"):
        loads(f"[channel]\nmax_bytes_per_tick = {value}\n")


_pieces = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b"\r\n", b" ", b"{}", b"x" * 100, b"y" * 5000]),
        st.binary(max_size=64),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(_pieces, st.lists(st.integers(0, 1 << 16), max_size=12))
def test_any_chunking_gives_the_lines_of_one_feed(
    pieces: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(pieces)
    one = wire.LineReader()
    whole = one.feed(data)
    bounds = sorted({c % (len(data) + 1) for c in cuts})
    reader = wire.LineReader()
    got: list[bytes] = []
    for i, j in zip([0, *bounds], [*bounds, len(data)], strict=True):
        got += reader.feed(data[i:j])
        assert reader.buffered < wire.MAX_LINE_BYTES
    assert got == whole
    assert (reader.dropped, reader.buffered) == (one.dropped, one.buffered)


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(
    _pieces,
    st.lists(st.integers(0, 1 << 16), max_size=12),
    st.lists(st.integers(0, 5), min_size=13, max_size=13),
)
def test_split_with_a_line_limit_accounts_for_every_line(
    pieces: list[bytes], cuts: list[int], limits: list[int]
) -> None:
    """Lines split out + lines counted + lines dropped = the lines of one feed."""
    data = b"".join(pieces)
    one = wire.LineReader()
    total = len(one.feed(data)) + one.dropped
    bounds = sorted({c % (len(data) + 1) for c in cuts})
    reader = wire.LineReader()
    seen = 0
    first: list[bytes] = []
    for k, (i, j) in enumerate(zip([0, *bounds], [*bounds, len(data)], strict=True)):
        lines, more = reader.split(data[i:j], limits[k])
        assert len(lines) <= limits[k]
        first += lines
        seen += len(lines) + more
        assert reader.buffered < wire.MAX_LINE_BYTES
    assert seen + reader.dropped == total
    assert all(b"\n" not in x and len(x) < wire.MAX_LINE_BYTES for x in first)
