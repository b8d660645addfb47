"""Fuzz the host side of the wire format: decode, LineReader and GuestChannel.

Hypothesis drives every test. Plain examples are too slow to reach 100 k inputs
in CI time, so most examples expand into a batch (:class:`_Batch`): hypothesis
draws a seed and a valid message, and a mutator (``random.Random(seed)``) derives
``BATCH`` corrupted variants (bit flips, truncation, splices, junk fields,
nesting, huge numbers). Total inputs per run: see ``INPUTS`` (>= 100 k). Nothing
may raise anything but WireError, and buffers stay bounded by MAX_LINE_BYTES.
"""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hypertier_wire as wire
from agent_host.channel import GuestChannel
from agent_host.config import ChannelConfig

T = TypeVar("T")
GiB = 1 << 30
BATCH = 100
# HYPERTIER_FUZZ_SCALE shrinks the run for quick local iterations (CI runs 1.0).
_SCALE = float(os.environ.get("HYPERTIER_FUZZ_SCALE", "1.0"))
_EXAMPLES_FULL = {
    "bytes": 4_000,  # 1 input each
    "mutants": 714,  # BATCH inputs each
    "json": 400,  # 1 input each
    "valid": 500,  # 1 input each
    "streams": 250,  # BATCH streams each
    "channel": 600,  # up to 20 chunks each
}
EXAMPLES = {k: max(1, int(v * _SCALE)) for k, v in _EXAMPLES_FULL.items()}
INPUTS = (
    EXAMPLES["bytes"]
    + EXAMPLES["mutants"] * BATCH
    + EXAMPLES["json"]
    + EXAMPLES["valid"]
    + EXAMPLES["streams"] * BATCH
    + EXAMPLES["channel"]
)


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def test_fuzz_budget_is_at_least_100k_inputs() -> None:
    if _SCALE >= 1.0:
        assert INPUTS >= 100_000


def _decode_or_wire_error(line: bytes) -> wire.Message | None:
    try:
        msg = wire.decode(line)
    except wire.WireError:
        return None
    if isinstance(msg, wire.Report):
        assert 0.0 <= msg.pressure <= 1.0
        assert len(msg.nodes) <= wire.MAX_NODES
        for n in msg.nodes:
            assert 0 <= n.used_bytes <= n.total_bytes <= wire.MAX_BYTES
    return msg


_sizes = st.integers(min_value=0, max_value=wire.MAX_BYTES)
_printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=64)
_node = st.builds(
    wire.NodeUsage,
    node=st.integers(0, 1023),
    tier=st.sampled_from(["fast", "slow"]),
    total_bytes=st.just(wire.MAX_BYTES),
    used_bytes=_sizes,
)
_valid = st.one_of(
    st.builds(wire.Hello, agent=_printable, version=_printable),
    st.builds(
        wire.Report,
        seq=st.integers(0, (1 << 63) - 1),
        nodes=st.lists(_node, max_size=wire.MAX_NODES).map(tuple),
        hot_bytes=_sizes,
        pressure=st.floats(0.0, 1.0),
        pages_moved=_sizes,
    ),
    *(
        st.builds(k, seq=st.integers(0, 1 << 62), fast_bytes=_sizes, slow_bytes=_sizes)
        for k in (wire.Allot, wire.Plugged)
    ),
)


@dataclass(frozen=True)
class _Batch(Generic[T]):
    """``BATCH`` variants that ``derive(rng, line)`` makes of one valid message's
    encoded line, ``rng`` being ``random.Random(seed)``. A failing example
    prints as its message and seed, not as the variants."""

    msg: wire.Message
    seed: int
    derive: Callable[[random.Random, bytes], T] = field(repr=False)

    def __iter__(self) -> Iterator[T]:
        rng = random.Random(self.seed)
        line = wire.encode(self.msg)
        for _ in range(BATCH):
            yield self.derive(rng, line)


def _batches(
    derive: Callable[[random.Random, bytes], T],
) -> st.SearchStrategy[_Batch[T]]:
    return st.builds(_Batch, _valid, st.integers(0, 1 << 32), st.just(derive))


_JUNK: list[Any] = [
    None, True, -1, 1 << 64, -(1 << 70), 1e308, -0.0, "x" * 100, "\u0000", "\ud800",
    [], {}, [[[[[]]]]], {"a": {"b": {"c": 1}}}, "fast", "slow", 1.5, "1",
]  # fmt: skip


def _mutate(rng: random.Random, line: bytes) -> bytes:
    """One corrupted variant of a valid message's line (its newline dropped)."""
    line = line.rstrip(b"\n")
    op = rng.randrange(9)
    b = bytearray(line)
    if op == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == 1:  # truncate
        return bytes(b[: rng.randrange(len(b) + 1)])
    if op == 2:  # insert random bytes
        pos = rng.randrange(len(b) + 1)
        return bytes(b[:pos] + rng.randbytes(rng.randint(1, 40)) + b[pos:])
    if op == 3:  # duplicate a slice
        i, j = sorted(rng.randrange(len(b) + 1) for _ in range(2))
        return bytes(b[:j] + b[i:j] * rng.randint(1, 200) + b[j:])
    obj = json.loads(line)
    keys = list(obj)
    if op == 4:  # replace a field with junk
        obj[rng.choice(keys)] = rng.choice(_JUNK)
    elif op == 5:  # delete a field
        del obj[rng.choice(keys)]
    elif op == 6:  # add an unknown field
        obj[rng.choice(["x", "V", "type ", "nodes", "seq"])] = rng.choice(_JUNK)
    elif op == 7 and isinstance(obj.get("nodes"), list) and obj["nodes"]:
        node = rng.choice(obj["nodes"])
        node[rng.choice([*node, "extra"])] = rng.choice(_JUNK)
    else:  # deep nesting (built as text: json.loads itself would recurse)
        obj[rng.choice(keys)] = "@DEEP@"
        depth = rng.choice([100, 2000, 100_000])
        return json.dumps(obj).replace('"@DEEP@"', "[" * depth + "]" * depth).encode()
    return json.dumps(obj).encode()


@_settings(EXAMPLES["bytes"])
@given(st.binary(max_size=wire.MAX_LINE_BYTES + 64))
def test_decode_random_bytes_only_raises_wire_error(line: bytes) -> None:
    _decode_or_wire_error(line)


@_settings(EXAMPLES["mutants"])
@given(_batches(_mutate))
def test_decode_mutated_messages_only_raises_wire_error(mutants: _Batch[bytes]) -> None:
    for line in mutants:
        _decode_or_wire_error(line)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["v", "type", "seq", "nodes", "hot_bytes", "pressure", "pages_moved", "agent",
     "version", "fast_bytes", "slow_bytes", "node", "tier", "total_bytes",
     "used_bytes"]
)  # fmt: skip


@st.composite
def _messageish(draw: st.DrawFn) -> dict[str, Any]:
    """An object shaped like a message whose fields may hold anything."""
    obj: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, 2, 1.0, "1", True]))}
    obj["type"] = draw(st.sampled_from(["hello", "report", "allot", "bogus", 1, None]))
    for key in draw(st.lists(_keys, max_size=6)):
        obj[key] = draw(_json)
    if draw(st.booleans()):
        obj["nodes"] = draw(
            st.lists(st.dictionaries(_keys, _json, max_size=5), max_size=4)
        )
    return obj


@_settings(EXAMPLES["json"])
@given(_messageish())
def test_decode_messageish_json_only_raises_wire_error(obj: dict[str, Any]) -> None:
    _decode_or_wire_error(json.dumps(obj).encode())


@_settings(EXAMPLES["valid"])
@given(_valid)
def test_valid_messages_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg).rstrip(b"\n")) == msg


def _stream(rng: random.Random, valid: bytes) -> list[bytes]:
    parts = [
        rng.choice(
            [
                valid,
                b"\n",
                b"x" * rng.randint(0, 9000),
                rng.randbytes(rng.randint(0, 300)),
            ]
        )
        for _ in range(rng.randint(1, 8))
    ]
    data = b"".join(parts)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 6)))
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@_settings(EXAMPLES["streams"])
@given(_batches(_stream))
def test_line_reader_is_bounded_and_lossless_for_short_lines(
    streams: _Batch[list[bytes]],
) -> None:
    for chunks in streams:
        reader = wire.LineReader()
        got: list[bytes] = []
        for chunk in chunks:
            for line in reader.feed(chunk):
                assert b"\n" not in line
                assert len(line) < wire.MAX_LINE_BYTES
                got.append(line)
            assert len(reader._buf) < wire.MAX_LINE_BYTES
        stream = b"".join(chunks)
        complete = stream[: stream.rfind(b"\n") + 1].split(b"\n")[:-1]
        if reader.dropped == 0:
            assert got == complete  # blank lines included: they are counted


_chunk = st.one_of(
    st.binary(max_size=256),
    st.sampled_from([b"\n", b"{}\n", b"a" * 4095, b"a" * 4096 + b"\n"]),
    _valid.map(wire.encode),
)


@_settings(EXAMPLES["channel"])
@given(st.lists(_chunk, max_size=20), st.floats(0.0, 1000.0))
def test_guest_channel_never_crashes(chunks: list[bytes], t0: float) -> None:
    chan = GuestChannel("vm", ChannelConfig())
    for i, chunk in enumerate(chunks):
        chan.feed(chunk, t0 + i * 0.01, {"fast": 8 * GiB, "slow": 8 * GiB})
    if chan.latest is not None:
        rep = chan.latest.report
        assert rep.hot_bytes <= sum(n.total_bytes for n in rep.nodes)
        assert sum(n.total_bytes for n in rep.nodes if n.tier == "fast") <= 8 * GiB + (
            1 << 40
        )


def test_endless_line_uses_bounded_memory() -> None:
    reader = wire.LineReader()
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        for _ in range(256):  # 16 MiB without a newline
            for _line in reader.feed(chunk):
                raise AssertionError("no line expected")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 65536 + 4 * wire.MAX_LINE_BYTES
    assert reader.dropped == 1
