"""perf_abi: attr encoding, event specs, bulk ring decoding (pure, synthetic rings)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from agent_guest import perf_abi as abi

BASIC = abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_ADDR


def _lost(n: int) -> bytes:
    return struct.pack("<IHHQQ", abi.RECORD_LOST, 0, 24, 7, n)


def _throttle(kind: int = abi.RECORD_THROTTLE) -> bytes:
    return struct.pack("<IHHQQQ", kind, 0, 32, 1, 2, 3)


def test_attr_is_ver5_sized_with_fields_at_abi_offsets() -> None:
    attr = abi.encode_attr(
        type_=abi.TYPE_SOFTWARE,
        config=abi.SW_PAGE_FAULTS,
        sample_period=100,
        sample_type=BASIC,
        precise_ip=2,
        config1=64,
    )
    assert len(attr) == abi.ATTR_SIZE == 112
    type_, size, config, period, stype = struct.unpack_from("<IIQQQ", attr)
    assert (type_, size, config, period, stype) == (1, 112, 2, 100, BASIC)
    (flags,) = struct.unpack_from("<Q", attr, 40)
    assert flags & abi.FLAG_DISABLED
    assert flags & abi.FLAG_EXCLUDE_KERNEL
    assert (flags >> abi.PRECISE_IP_SHIFT) & 3 == 2
    assert struct.unpack_from("<Q", attr, 56)[0] == 64  # config1 = ldlat


def test_attr_rejects_sample_fields_decode_cannot_read() -> None:
    with pytest.raises(ValueError, match="sample_type"):
        abi.encode_attr(type_=1, config=2, sample_period=1, sample_type=1 << 5)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("event=0xcd,umask=0x1,ldlat=3", (0x1CD, 3, 0), id="mem-loads"),
        pytest.param("event=0xd0,umask=0x82", (0x82D0, 0, 0), id="mem-stores"),
        pytest.param("event=0xcd,umask=0x1,ldlat=64", (0x1CD, 64, 0), id="ldlat-64"),
    ],
)
def test_event_spec_maps_terms_through_sysfs_format(
    spec: str, expected: tuple[int, int, int]
) -> None:
    formats = {"event": "config:0-7", "umask": "config:8-15", "ldlat": "config1:0-15"}
    assert abi.parse_event_spec(spec, formats) == expected


def test_event_spec_with_unknown_term_is_an_error() -> None:
    with pytest.raises(ValueError, match="frontend"):
        abi.parse_event_spec("frontend=1", {"event": "config:0-7"})


def test_decode_reads_every_sample_field() -> None:
    ring = abi.synthetic_ring(1000, BASIC | abi.SAMPLE_WEIGHT, pid=42, seed=3)
    d = abi.decode(ring, BASIC | abi.SAMPLE_WEIGHT)
    assert d.addr.shape == (1000,)
    assert (d.pid == 42).all()
    assert (d.tid == 42).all()
    assert (np.diff(d.time_ns.astype(np.int64)) == 1000).all()
    assert (d.addr >= 0x7F0000000000).all()
    assert (d.weight < 500).all()
    assert d.lost == d.throttled == d.bad_bytes == 0


def test_decode_counts_lost_and_throttle_records_between_samples() -> None:
    part = abi.synthetic_ring(10, BASIC).tobytes()
    raw = part + _lost(5) + part + _throttle() + _throttle(abi.RECORD_UNTHROTTLE) + part
    d = abi.decode(np.frombuffer(raw, np.uint8), BASIC)
    assert d.addr.shape == (30,)
    assert d.lost == 5
    assert (d.throttled, d.unthrottled) == (1, 1)


def test_decode_stops_at_a_corrupt_header() -> None:
    raw = (
        abi.synthetic_ring(4, BASIC).tobytes()
        + struct.pack("<IHH", 9, 0, 3)
        + b"\0" * 8
    )
    d = abi.decode(np.frombuffer(raw, np.uint8), BASIC)
    assert d.addr.shape == (4,)
    assert d.bad_bytes == 16


def test_decode_takes_address_from_tracepoint_raw_data() -> None:
    st = abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_RAW
    # page_fault_user entry: 8 bytes common fields, address at 8, ip, error_code
    entry = struct.pack("<HBBiQQQ", 190, 0, 0, 77, 0xDEAD000, 0x400000, 6)
    raw = struct.pack("<I", len(entry) + 4) + entry + b"\0" * 4
    size = 8 + 8 + 8 + len(raw)
    rec = struct.pack("<IHHiiQ", abi.RECORD_SAMPLE, 0, size, 77, 78, 123) + raw
    d = abi.decode(np.frombuffer(rec * 3, np.uint8), st, raw_addr_offset=8)
    assert d.addr.tolist() == [0xDEAD000] * 3
    assert d.pid.tolist() == [77] * 3


def test_ring_slice_unwraps_across_the_end() -> None:
    data = np.arange(16, dtype=np.uint8)
    out = abi.ring_slice(data, tail=12, head=20)
    assert out.tolist() == [12, 13, 14, 15, 0, 1, 2, 3]


def test_ring_slice_empty_when_head_equals_tail() -> None:
    assert abi.ring_slice(np.zeros(16, np.uint8), 5, 5).shape == (0,)


def test_ring_slice_refuses_more_than_the_ring_holds() -> None:
    with pytest.raises(ValueError, match="overrun"):
        abi.ring_slice(np.zeros(16, np.uint8), 0, 17)


def test_records_straddling_the_wrap_decode_after_unwrapping() -> None:
    recs = abi.synthetic_ring(8, BASIC)  # 8 x 32 bytes
    ring = np.zeros(256, np.uint8)
    start = 200  # the second record straddles the end
    ring[start:] = recs[: 256 - start]
    ring[: recs.shape[0] - (256 - start)] = recs[256 - start :]
    out = abi.ring_slice(ring, start, start + recs.shape[0])
    d = abi.decode(out, BASIC)
    assert d.addr.tolist() == abi.decode(recs, BASIC).addr.tolist()
