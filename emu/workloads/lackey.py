"""Parsing valgrind lackey logs into the LLC-miss stream of a trace.

:class:`LackeyParser` turns blocks of ``valgrind --tool=lackey`` output
(data accesses, syscalls whose buffers the kernel writes, phase marks) into
byte addresses and store flags, vectorised; :func:`miss_stream` filters them
through the LLC model and numbers their pages (docs/traces.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from emu.workloads.trace import (
    LINE_SHIFT,
    PAGE_SHIFT,
    LlcFilter,
    PageNumbering,
)
from hypertier_common.arrays import I64, U8, U64, BoolArray

__all__ = ["KERNEL_WRITE_SYSCALLS", "LackeyParser", "ParsedBlock", "miss_stream"]

_HEX = np.zeros(256, np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
    _HEX[bytes([_c]).upper()[0]] = _i
_SHIFTS = (4 * np.arange(15, -1, -1)).astype(np.uint64)
_SP, _NL, _COMMA = ord(" "), ord("\n"), ord(",")
_L, _S, _M = ord("L"), ord("S"), ord("M")
# syscalls whose buffer argument the kernel writes: name -> (fd arg, buf arg)
KERNEL_WRITE_SYSCALLS = ("read", "pread64", "recvfrom")
_CALL = re.compile(
    r"SYSCALL\[(\d+),(\d+)\]\((\d+)\) sys_(\w+) \( *(\d+), *(0x[0-9a-fA-F]+)"
)
_DONE = re.compile(r"--> (?:\[[\w-]+\] )?Success\((0x[0-9a-fA-F]+)\)")


def _path_call(name: str) -> re.Pattern[str]:
    """``name``(2) or ``name``at(2) with its path argument (lackey prints the
    string after the pointer) as group 1."""
    return re.compile(
        rf"SYSCALL\[\d+,\d+\]\(\d+\) sys_{name}(?:at)? "
        r"\((?: *\d+,)? *0x[0-9a-fA-F]+\(([^)]*)\)"
    )


_OPEN = _path_call("open")
_ASYNC_DONE = re.compile(
    r"SYSCALL\[(\d+),(\d+)\]\((\d+)\) \.\.\. \[async\] --> Success\((0x[0-9a-fA-F]+)\)"
)
# valgrind's own note on a fork(2), vfork(2) or process-creating clone(2)
_CHILD = re.compile(r"created child (\d+)")
# execve(2)/execveat(2); a failed one has its "--> ...Failure(...)" on the same line,
# a successful one nothing: the process image (valgrind included) is gone
_EXEC = _path_call("execve")


@dataclass
class ParsedBlock:
    """Accesses of one block of lackey output: byte addresses and store flags."""

    addrs: U64
    stores: BoolArray
    kernel_bytes: int = 0
    marks: list[int] = field(default_factory=list)  # access offsets of phase marks


class LackeyParser:
    """Streams ``valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes`` output.

    Data lines (`` L``/`` S``/`` M`` addr,size) become accesses (``M`` is a store;
    instruction fetches are left out). The buffer of every successful read(2),
    pread64(2) and recvfrom(2) becomes stores of its cache lines at the point the
    syscall returned, since lackey does not see the kernel's writes. An open(2)
    or openat(2) of ``marker_path`` (successful or not) marks a phase boundary.

    The log is the traced process's alone (``--child-silent-after-fork=yes``):
    ``children`` lists the processes it started, whose accesses are not in it,
    and ``exec_path`` the program it replaced itself with by a successful
    execve(2), after which nothing is traced (valgrind does not follow exec
    without ``--trace-children=yes``, and with it the children would log too).
    """

    def __init__(self, marker_path: str | None = None) -> None:
        self.marker_path = marker_path
        self._tail = b""
        self._pending: dict[tuple[str, str, str], int] = {}
        self.accesses = 0
        self.kernel_bytes = 0
        self.children: list[int] = []
        self.exec_path: str | None = None
        self._exec_line = -1  # line of exec_path's execve in the block parsed

    def feed(self, data: bytes) -> ParsedBlock:
        """Parse ``data`` (any split of the stream); a partial last line waits."""
        buf = self._tail + data
        cut = buf.rfind(b"\n") + 1
        self._tail = buf[cut:]
        return self._parse(buf[:cut])

    def exec_pending(self) -> str | None:
        """The program named by an execve(2) whose line still waits for its
        result (the log's unfinished last line): a successful exec never ends
        it, since the process image that would have is gone."""
        m = _EXEC.match(self._tail.decode("latin-1"))
        return m.group(1) if m is not None and b"-->" not in self._tail else None

    def finish(self) -> ParsedBlock:
        """Parse what is left (a last line without newline)."""
        tail, self._tail = self._tail, b""
        return self._parse(tail + b"\n" if tail else b"")

    def _parse(self, buf: bytes) -> ParsedBlock:
        a = np.frombuffer(buf, np.uint8)
        if len(a) == 0:
            return ParsedBlock(np.empty(0, np.uint64), np.empty(0, bool))
        ends = np.flatnonzero(a == _NL)
        starts = np.empty(len(ends), np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        length = ends - starts
        c0 = a[np.minimum(starts, len(a) - 1)]
        c1 = a[np.minimum(starts + 1, len(a) - 1)]
        data = (length >= 5) & (c0 == _SP) & ((c1 == _L) | (c1 == _S) | (c1 == _M))
        ds = starts[data]
        commas = np.flatnonzero(a == _COMMA)
        cpos = commas[np.minimum(np.searchsorted(commas, ds), len(commas) - 1)]
        ok = (cpos > ds + 3) & (cpos - (ds + 3) <= 16) & (cpos < ends[data])
        ds, cpos = ds[ok], cpos[ok]
        line_no = np.flatnonzero(data)[ok]
        idx = cpos[:, None] - 16 + np.arange(16)[None, :]
        valid = idx >= (ds + 3)[:, None]
        digits = _HEX[a[np.where(valid, idx, 0)]]
        digits[~valid] = 0
        addrs = (digits << _SHIFTS).sum(axis=1, dtype=np.uint64)
        stores = a[ds + 1] != _L
        kernel, mark_lines = self._syscalls(buf, starts, ends, c0)
        if (
            self.exec_path is not None
            and len(line_no)
            and line_no[-1] > self._exec_line
        ):
            self.exec_path = None  # the process went on: the exec failed
        self._exec_line = -1  # every line of a later block comes after
        keys_sorted = line_no
        if kernel:
            k_lines = np.concatenate([np.full(len(x), i) for i, x in kernel])
            k_addrs = np.concatenate([x for _, x in kernel])
            keys = np.concatenate([line_no, k_lines])
            o = np.argsort(keys, kind="stable")
            addrs = np.concatenate([addrs, k_addrs])[o]
            stores = np.concatenate([stores, np.ones(len(k_addrs), bool)])[o]
            kbytes = len(k_addrs) << LINE_SHIFT
            keys_sorted = keys[o]
        else:
            kbytes = 0
        self.accesses += len(addrs)
        self.kernel_bytes += kbytes
        marks = np.searchsorted(keys_sorted, np.array(mark_lines, np.int64)).tolist()
        return ParsedBlock(addrs.astype(np.uint64), stores, kbytes, marks)

    def _syscalls(
        self,
        buf: bytes,
        starts: I64,
        ends: npt.NDArray[np.intp],
        c0: U8,
    ) -> tuple[list[tuple[int, U64]], list[int]]:
        out: list[tuple[int, U64]] = []
        marks: list[int] = []
        for i in np.flatnonzero(c0 == ord("S")).tolist():
            text = buf[int(starts[i]) : int(ends[i])].decode("latin-1")
            if not text.startswith("SYSCALL["):
                continue
            self._note_process(text, i)
            if self.marker_path is not None and self._opens_marker(text):
                marks.append(i)
                continue
            buf_addr, nbytes = self._kernel_write(text)
            if nbytes > 0:
                first = buf_addr >> LINE_SHIFT
                last = (buf_addr + nbytes - 1) >> LINE_SHIFT
                lines = np.arange(first, last + 1, dtype=np.uint64)
                out.append((i, lines << np.uint64(LINE_SHIFT)))
        return out, marks

    def _note_process(self, text: str, line: int) -> None:
        """Count a child the process started; note an execve(2) with no failure
        on its line (taken back by any later line: the exec failed)."""
        self.exec_path = None
        child = _CHILD.search(text)
        if child is not None:
            self.children.append(int(child.group(1)))
            return
        m = _EXEC.match(text)
        if m is not None and "-->" not in text:
            self.exec_path, self._exec_line = m.group(1), line

    def _opens_marker(self, text: str) -> bool:
        m = _OPEN.match(text)
        return m is not None and m.group(1) == self.marker_path

    def _kernel_write(self, text: str) -> tuple[int, int]:
        """(buffer, bytes) the kernel wrote for this syscall line, or (0, 0)."""
        m = _CALL.match(text)
        if m is not None:
            pid, tid, nr, name, _fd, addr = m.groups()
            if name not in KERNEL_WRITE_SYSCALLS:
                return 0, 0
            done = _DONE.search(text)
            if done is not None:
                return int(addr, 16), int(done.group(1), 16)
            if "[async]" in text:
                self._pending[(pid, tid, nr)] = int(addr, 16)
            return 0, 0
        m2 = _ASYNC_DONE.match(text)
        if m2 is not None:
            pid, tid, nr, result = m2.groups()
            addr_ = self._pending.pop((pid, tid, nr), None)
            if addr_ is not None:
                return addr_, int(result, 16)
        return 0, 0


def miss_stream(
    blocks: Iterator[ParsedBlock], llc: LlcFilter, numbering: PageNumbering
) -> Iterator[tuple[I64, BoolArray, int]]:
    """(page indices, store flags, raw accesses) of the LLC misses of each block."""
    for blk in blocks:
        if len(blk.addrs) == 0:
            yield np.empty(0, np.int64), np.empty(0, bool), 0
            continue
        miss = llc.access(blk.addrs >> np.uint64(LINE_SHIFT))
        pages = blk.addrs[miss] >> np.uint64(PAGE_SHIFT)
        yield numbering.number(pages), blk.stores[miss], len(blk.addrs)
