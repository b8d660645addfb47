"""Record a trace from a real program under valgrind's lackey (valgrind(1)).

The program runs under ``valgrind --tool=lackey --trace-mem=yes
--trace-syscalls=yes --child-silent-after-fork=yes``; its log arrives on a pipe
and is parsed, LLC-filtered and numbered block by block
(:mod:`emu.workloads.lackey`), so the raw stream is never held. The trace is the
started process's own: children it forks run untraced (the count is in the
metadata, and a warning says so), and a program that replaces itself by
execve(2) (a wrapper: ``sh -c 'exec ...'``, ``taskset``, ``env``) is stopped
with an error naming the program to record instead.
Client commands (e.g. a benchmark driving a server) run one after the other,
each starting a new phase; after the last one the program gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence

import numpy as np

from emu.workloads.lackey import KERNEL_WRITE_SYSCALLS, LackeyParser
from emu.workloads.trace import (
    LlcFilter,
    PageNumbering,
    Trace,
    build_trace,
)
from hypertier_common.arrays import I64, BoolArray

__all__ = ["RecordError", "record"]

log = logging.getLogger(__name__)

_BLOCK_BYTES = 1 << 20
_POLL_S = 0.05
_REPORT_EVERY = 10_000_000  # accesses between progress lines (INFO)


class RecordError(RuntimeError):
    """Recording failed: valgrind missing, the program or a client failed."""


def _valgrind_version() -> str:
    out = subprocess.run(
        ["valgrind", "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "valgrind"


def _wait_port(port: int, timeout_s: float, stop: threading.Event) -> bool:
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while not stop.is_set() and datetime.datetime.now() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            stop.wait(0.2)
    return False


def _left_valgrind(pid: int) -> bool:
    """Whether ``pid`` now runs a program other than valgrind's lackey (it
    execve'd natively); False if it is gone or cannot be read."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return not os.path.basename(exe).startswith("lackey-")


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the program and every process it started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class _Recorder:
    def __init__(
        self,
        cache_bytes: int,
        ways: int,
        max_accesses: int | None,
        marker_path: str | None,
    ) -> None:
        self.parser = LackeyParser(marker_path)
        self.llc = LlcFilter(cache_bytes, ways)
        self.numbering = PageNumbering()
        self.chunks: list[tuple[I64, BoolArray]] = []
        self.misses = 0
        self.marks: list[int] = []
        self.max_accesses = max_accesses
        self.mark_request = threading.Event()
        self.mark_done = threading.Event()
        self.stopped_exec = False  # killed what the program execve'd

    def consume(self, data: bytes, final: bool = False) -> None:
        blk = self.parser.feed(data) if not final else self.parser.finish()
        if len(blk.addrs) == 0:
            return
        miss = self.llc.access(blk.addrs >> np.uint64(6))
        self.marks += [self.misses + int(miss[:off].sum()) for off in blk.marks]
        pages = self.numbering.number(blk.addrs[miss] >> np.uint64(12))
        self.chunks.append((pages, blk.stores[miss]))
        self.misses += len(pages)

    @property
    def full(self) -> bool:
        return self.max_accesses is not None and (
            self.parser.accesses >= self.max_accesses
        )

    def read_all(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        """Read the log until EOF, taking phase marks when asked."""
        while True:
            ready, _, _ = select.select([fd], [], [], _POLL_S)
            if ready:
                data = os.read(fd, _BLOCK_BYTES)
                if not data:
                    break
                before = self.parser.accesses
                self.consume(data)
                if before // _REPORT_EVERY != self.parser.accesses // _REPORT_EVERY:
                    log.info(
                        "%d accesses, %d misses, %d pages so far",
                        self.parser.accesses,
                        self.misses,
                        self.numbering.count,
                    )
                if self.full and proc.poll() is None:
                    log.warning("reached %d accesses, stopping", self.max_accesses)
                    _signal_group(proc, signal.SIGKILL)
            elif proc.poll() is not None:
                # the program is gone; untraced children it left (valgrind does
                # not follow them) may still hold the log pipe open
                _signal_group(proc, signal.SIGKILL)
            elif self.parser.exec_pending() is not None and _left_valgrind(proc.pid):
                # it execve'd: what runs now is untraced, and holds the pipe
                log.warning(
                    "the program execve'd %s, which runs untraced: stopping it",
                    self.parser.exec_pending(),
                )
                self.stopped_exec = True
                _signal_group(proc, signal.SIGKILL)
            elif self.mark_request.is_set():
                # the pipe is empty: everything logged so far is before the mark
                self.marks.append(self.misses)
                self.mark_request.clear()
                self.mark_done.set()
        self.consume(b"", final=True)


def record(
    command: Sequence[str],
    *,
    cache_bytes: int = 8 << 20,
    ways: int = 16,
    clients: Sequence[str] = (),
    wait_port: int | None = None,
    wait_s: float = 120.0,
    max_accesses: int | None = None,
    marker_path: str | None = None,
) -> Trace:
    """Run ``command`` under lackey and return its LLC-miss trace.

    ``clients`` are shell commands run in order once the program is up (after
    ``wait_port`` accepts connections, if given); each starts a phase, and the
    program is sent SIGTERM after the last. ``max_accesses`` stops the program
    after that many recorded accesses. Each open(2) of ``marker_path`` by the
    program also starts a phase (e.g. ``.read PATH`` in an sqlite3 script).

    Raises:
        RecordError: valgrind is missing, the port never opened, a client
            failed, or the program made no accesses.
    """
    if shutil.which("valgrind") is None:
        raise RecordError("valgrind not found; install it: apt-get install valgrind")
    if not command:
        raise RecordError("no command to record")
    rec = _Recorder(cache_bytes, ways, max_accesses, marker_path)
    r, w = os.pipe()
    argv = [
        "valgrind",
        "--tool=lackey",
        "--trace-mem=yes",
        "--trace-syscalls=yes",
        "--child-silent-after-fork=yes",  # a child's log would interleave
        f"--log-fd={w}",
        *command,
    ]
    log.info("recording: %s", shlex.join(argv))
    try:
        proc = subprocess.Popen(argv, pass_fds=(w,), start_new_session=True)
    except OSError as err:
        os.close(r)
        os.close(w)
        raise RecordError(f"cannot start valgrind: {err}") from err
    os.close(w)
    stop = threading.Event()
    failures: list[str] = []

    def drive() -> None:
        try:
            if wait_port is not None and not _wait_port(wait_port, wait_s, stop):
                failures.append(f"port {wait_port} did not open in {wait_s} s")
                return
            for cmd in clients:
                rec.mark_done.clear()
                rec.mark_request.set()
                while not rec.mark_done.wait(_POLL_S):
                    if stop.is_set():
                        return
                log.info("phase %d: %s", len(rec.marks), cmd)
                done = subprocess.run(
                    cmd, shell=True, stdout=subprocess.DEVNULL, check=False
                )
                if done.returncode != 0:
                    failures.append(f"client {cmd!r} exited {done.returncode}")
                    return
        finally:
            if clients and proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)

    driver = threading.Thread(target=drive, name="trace-clients", daemon=True)
    driver.start()
    try:
        rec.read_all(r, proc)
    except BaseException:
        _signal_group(proc, signal.SIGKILL)
        raise
    finally:
        stop.set()
        os.close(r)
        status = proc.wait()
        driver.join()
    if failures:
        raise RecordError("; ".join(failures))
    if rec.parser.exec_path is not None:
        path, prog = rec.parser.exec_path, command[0]
        fate = "ran untraced and was stopped" if rec.stopped_exec else "ran untraced"
        raise RecordError(
            f"{prog} replaced itself with {path} (execve): valgrind traces only the "
            f"program it starts, so the trace would hold {prog}'s start-up alone; "
            f"{path} {fate}. Record {path} itself (-- {path} ARGS...); put a "
            "wrapper such as taskset, numactl or env in front of hypertier instead"
        )
    if rec.misses == 0:
        raise RecordError(
            f"{shlex.join(command)} made no recorded accesses (exit status {status})"
        )
    children = rec.parser.children
    if children:
        log.warning(
            "%s started %d child process(es) (pids %s%s), which ran untraced: the "
            "trace holds %s's own accesses only",
            command[0],
            len(children),
            ", ".join(map(str, children[:5])),
            ", ..." if len(children) > 5 else "",
            command[0],
        )
    if status != 0 and not clients and not rec.full:
        log.warning("%s exited with status %d", shlex.join(command), status)
    meta: dict[str, object] = {
        "program": command[0],
        "argv": list(command),
        "clients": list(clients),
        "phase_marker_path": marker_path,
        "exit_status": status,
        "untraced_children": len(children),
        "page_size": 4096,
        "llc": {
            "size_bytes": rec.llc.size_bytes,
            "ways": rec.llc.ways,
            "line_bytes": rec.llc.line_bytes,
            "policy": "LRU",
        },
        "raw_accesses": rec.parser.accesses,
        "kernel_write_bytes": rec.parser.kernel_bytes,
        "kernel_writes": "buffers of "
        + ", ".join(KERNEL_WRITE_SYSCALLS)
        + " stored at syscall return",
        "recorder": f"{_valgrind_version()} lackey --trace-mem=yes "
        "--trace-syscalls=yes --child-silent-after-fork=yes; instruction fetches "
        "left out",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return build_trace(rec.chunks, rec.numbering, rec.marks, meta)
