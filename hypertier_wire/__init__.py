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
  {"v":1,"type":"plugged","seq":4,"fast_bytes":...,"slow_bytes":...}

The receiver trusts nothing: :func:`decode` validates every field (types,
ranges, list lengths) and raises :class:`WireError`; :class:`LineReader` bounds
its buffer and drops over-long lines.
"""

from __future__ import annotations

import json
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
    "Plugged",
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


@dataclass(frozen=True)
class Plugged:
    """Host -> guest: what each tier's device has plugged now (libvirt's
    ``<current>``), as the host last read it. It differs from the allotment
    while the guest's virtio-mem driver (un)plugs, or when it cannot comply."""

    seq: int
    fast_bytes: int
    slow_bytes: int


Message = Hello | Report | Allot | Plugged
_TYPE_NAMES: dict[type, str] = {
    Hello: "hello",
    Report: "report",
    Allot: "allot",
    Plugged: "plugged",
}


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
    if not line.lstrip().startswith(b"{"):
        # Most junk fails here, before the JSON parser (a flood's cost).
        raise WireError("not a JSON object")
    try:
        # UTF-8 only (json.loads on bytes would also guess UTF-16 and UTF-32).
        obj = json.loads(line.decode())
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
    if kind in ("allot", "plugged"):
        _keys(obj, {"v", "type", "seq", "fast_bytes", "slow_bytes"}, kind)
        return (Allot if kind == "allot" else Plugged)(
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
    """Split a byte stream into lines with a bounded buffer, without a Python
    loop over the lines a caller does not want.

    Over-long lines (``max_line_bytes`` or more, newline included) are dropped
    whole and counted in ``dropped``, so a peer that never sends a newline
    costs at most ``max_line_bytes`` of memory. Blank lines are lines: they are
    returned (as ``b""``) and counted like any other, never skipped silently.
    Splitting uses ``bytes.find``/``count`` (C loops over the buffer): with
    ``max_lines`` only that many lines become Python objects, the rest of the
    chunk is counted in one call, however many tiny lines it holds.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._buf = b""  # the partial last line, always < max_line_bytes
        self._skipping = False  # inside a dropped line: discard up to a newline
        self.dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes of a partial line held until its newline arrives."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Every complete line ended in ``data`` (without its newline)."""
        return self.split(data)[0]

    def split(
        self, data: bytes, max_lines: int | None = None
    ) -> tuple[list[bytes], int]:
        """The first ``max_lines`` complete lines ended in ``data``, and how many
        more complete lines it ended (counted, not split; over-long ones
        included). Over-long lines among the first are dropped and counted in
        ``dropped``; they do not count against ``max_lines``.
        """
        lines: list[bytes] = []
        want = len(data) + 1 if max_lines is None else max_lines
        pos = 0
        while len(lines) < want:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False  # the end of a dropped line
            elif len(self._buf) + nl - pos >= self._max:
                self._buf = b""
                self.dropped += 1
            elif self._buf:
                lines.append(self._buf + data[pos:nl])
                self._buf = b""
            else:
                lines.append(data[pos:nl])
            pos = nl + 1
        more = 0
        last = data.rfind(b"\n", pos)
        if last >= 0:
            if self._skipping:
                self._skipping = False
                pos = data.find(b"\n", pos) + 1
            more = data.count(b"\n", pos, last + 1)
            self._buf = b""  # ended inside the counted lines
            pos = last + 1
        if self._skipping:
            return lines, more
        if len(self._buf) + len(data) - pos >= self._max:
            self._buf = b""
            self.dropped += 1
            self._skipping = True
        elif pos < len(data):
            self._buf += data[pos:]
        return lines, more

    def discard(self, data: bytes) -> None:
        """Bytes of the stream that are thrown away unread (over a budget).

        The partial line is lost and, unless ``data`` ends with a newline, so is
        the line it ends in: the reader skips to the next newline.
        """
        if data:
            self._buf = b""
            self._skipping = not data.endswith(b"\n")

    def reset(self) -> None:
        """Forget the partial line: the stream starts afresh (a new connection)."""
        self._buf = b""
        self._skipping = False
