"""The host-guest wire format of HyperTier, shared by both agents.

Newline-delimited JSON objects, one message per line, at most MAX_LINE_BYTES
bytes each (newline included). Every message has ``v`` (protocol version, an
int) and ``type``. Both directions are documented in docs/wire-protocol.md.

guest -> host:
  {"v":1,"type":"hello","agent":"hypertier-guest","version":"0.1.0"}
  {"v":1,"type":"report","seq":7,"nodes":[{"node":0,"tier":"fast",
    "total_bytes":...,"used_bytes":...},...],"hot_bytes":...,"pressure":0.4,
    "pages_moved":...}
host -> guest:
  {"v":1,"type":"hello","agent":"hypertier-host","version":"0.1.0"}
  {"v":1,"type":"allot","seq":3,"fast_bytes":...,"slow_bytes":...}

The receiver trusts nothing: :func:`decode` validates every field (types,
ranges, list lengths) and raises :class:`WireError`; :class:`LineReader` bounds
its buffer and drops over-long lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

__all__ = [
    "MAX_BYTES",
    "MAX_LINE_BYTES",
    "MAX_NODES",
    "VERSION",
    "Allot",
    "Hello",
    "LineReader",
    "Message",
    "NodeUsage",
    "Report",
    "WireError",
    "decode",
    "encode",
]

VERSION = 1
MAX_LINE_BYTES = 4096
MAX_NODES = 16
MAX_BYTES = 1 << 50  # 1 PiB: any size field above is nonsense
MAX_SEQ = (1 << 63) - 1
_TIERS = ("fast", "slow")


class WireError(ValueError):
    """A line that is not a valid message; the text says which field and why."""


@dataclass(frozen=True)
class Hello:
    agent: str
    version: str


@dataclass(frozen=True)
class NodeUsage:
    node: int
    tier: str
    total_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class Report:
    """Guest -> host: per-node usage, hot-set estimate and fast-tier pressure."""

    seq: int
    nodes: tuple[NodeUsage, ...]
    hot_bytes: int
    pressure: float
    pages_moved: int = 0


@dataclass(frozen=True)
class Allot:
    """Host -> guest: the allotment of each tier the guest should expect."""

    seq: int
    fast_bytes: int
    slow_bytes: int


Message = Hello | Report | Allot
_TYPE_NAMES: dict[type, str] = {Hello: "hello", Report: "report", Allot: "allot"}


def encode(msg: Message) -> bytes:
    """One message as one line (bytes, newline-terminated)."""
    body = asdict(msg)
    obj = {"v": VERSION, "type": _TYPE_NAMES[type(msg)], **body}
    line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"message of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    return line


def _int(obj: dict[str, object], key: str, lo: int, hi: int) -> int:
    val = obj.get(key)
    if type(val) is not int:
        raise WireError(f"{key}: expected an integer, got {type(val).__name__}")
    if not lo <= val <= hi:
        raise WireError(f"{key}: {val} outside [{lo}, {hi}]")
    return val


def _str(obj: dict[str, object], key: str, max_len: int = 64) -> str:
    val = obj.get(key)
    if not isinstance(val, str):
        raise WireError(f"{key}: expected a string, got {type(val).__name__}")
    if len(val) > max_len or not val.isprintable():
        raise WireError(f"{key}: not a printable string of at most {max_len} chars")
    return val


def _keys(obj: dict[str, object], allowed: set[str], where: str) -> None:
    extra = set(obj) - allowed
    if extra:
        raise WireError(f"{where}: unknown field(s) {sorted(extra)}")


def decode(line: bytes) -> Message:
    """Parse and validate one line. Raises WireError on anything unexpected."""
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as err:
        raise WireError(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise WireError("not a JSON object")
    if obj.get("v") != VERSION or type(obj.get("v")) is not int:
        raise WireError(f"v: unsupported protocol version {obj.get('v')!r}")
    kind = obj.get("type")
    if kind == "hello":
        _keys(obj, {"v", "type", "agent", "version"}, "hello")
        return Hello(_str(obj, "agent"), _str(obj, "version"))
    if kind == "allot":
        _keys(obj, {"v", "type", "seq", "fast_bytes", "slow_bytes"}, "allot")
        return Allot(
            _int(obj, "seq", 0, MAX_SEQ),
            _int(obj, "fast_bytes", 0, MAX_BYTES),
            _int(obj, "slow_bytes", 0, MAX_BYTES),
        )
    if kind == "report":
        _keys(
            obj,
            {"v", "type", "seq", "nodes", "hot_bytes", "pressure", "pages_moved"},
            "report",
        )
        raw_nodes = obj.get("nodes")
        if not isinstance(raw_nodes, list) or len(raw_nodes) > MAX_NODES:
            raise WireError(f"nodes: expected a list of at most {MAX_NODES}")
        nodes = []
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, dict):
                raise WireError(f"nodes[{i}]: expected an object")
            _keys(raw, {"node", "tier", "total_bytes", "used_bytes"}, f"nodes[{i}]")
            tier = _str(raw, "tier")
            if tier not in _TIERS:
                raise WireError(f"nodes[{i}].tier: {tier!r} not one of {_TIERS}")
            total = _int(raw, "total_bytes", 0, MAX_BYTES)
            used = _int(raw, "used_bytes", 0, MAX_BYTES)
            if used > total:
                raise WireError(f"nodes[{i}]: used_bytes {used} > total_bytes {total}")
            nodes.append(NodeUsage(_int(raw, "node", 0, 1023), tier, total, used))
        pressure = obj.get("pressure")
        if type(pressure) not in (int, float) or not 0.0 <= pressure <= 1.0:  # type: ignore[operator]
            raise WireError(f"pressure: expected a number in [0, 1], got {pressure!r}")
        return Report(
            _int(obj, "seq", 0, MAX_SEQ),
            tuple(nodes),
            _int(obj, "hot_bytes", 0, MAX_BYTES),
            float(pressure),  # type: ignore[arg-type]
            _int(obj, "pages_moved", 0, MAX_BYTES) if "pages_moved" in obj else 0,
        )
    raise WireError(f"type: unknown message type {kind!r}")


class LineReader:
    """Split a byte stream into lines with a bounded buffer.

    Over-long lines are dropped whole (counted in ``dropped``), so a peer that
    never sends a newline costs at most MAX_LINE_BYTES of memory.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._buf = bytearray()
        self._skipping = False
        self.dropped = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield each complete line (without its newline) found in ``data``."""
        start = 0
        while True:
            nl = data.find(b"\n", start)
            chunk = data[start:] if nl < 0 else data[start:nl]
            if self._skipping:
                if nl >= 0:
                    self._skipping = False
            elif len(self._buf) + len(chunk) >= self._max:
                self._buf.clear()
                self.dropped += 1
                self._skipping = nl < 0
            elif nl >= 0:
                self._buf += chunk
                line = bytes(self._buf)
                self._buf.clear()
                if line.strip():
                    yield line
            else:
                self._buf += chunk
            if nl < 0:
                return
            start = nl + 1
