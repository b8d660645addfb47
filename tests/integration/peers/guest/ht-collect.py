#!/usr/bin/env python3
"""Guest-side collector for the peer comparison (not part of the product).

Every --interval-s prints one JSON line with, since the collector started: the
tiering counters of /proc/vmstat (proc(5)), the CPU time of the tracked tasks
(/proc/PID/stat fields utime and stime), the guest's TLB flushes by reason (the
tlb:tlb_flush tracepoint counted in the kernel by perf_event_open(2) with a
tracepoint filter per reason, no trace buffer), and each node's free memory.
Runs on the guest's python3, standard library only. Interface: README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VMSTAT_PREFIXES = (
    "pgpromote_",
    "pgdemote_",
    "numa_",
    "pgmigrate_",
    "thp_migration_",
    "pgsteal_kswapd",
    "pgscan_kswapd",
)
# Default tracked tasks: demotion under the kernel's tiering runs in kswapd, DAMON's
# schemes in its kdamond threads. Promotion under NUMA balancing runs in the hint
# fault of the task that touched the page, so it is in that task's system time.
DEFAULT_TRACKS = ("kswapd=comm:kswapd", "kdamond=comm:kdamond")
# Names the project's own TLB telemetry uses (agent_guest.linux_bpf); a reason the
# running kernel adds is named from its tracepoint format instead.
TLB_REASON_NAMES = {
    0: "task_switch",
    1: "remote_shootdown",
    2: "local_shootdown",
    3: "local_mm_shootdown",
    4: "remote_send_ipi",
    5: "remote_wrong_cpu",
}
_NR_PERF_EVENT_OPEN = 298  # x86-64
_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_IOC_SET_FILTER = 0x40082406  # _IOW('$', 6, char *)
_ATTR_BYTES = 128


class CollectError(Exception):
    """A source the collector was asked for cannot be read; the message says why."""


def parse_vmstat(text: str, prefixes: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(prefixes) and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def parse_stat_times(text: str) -> tuple[str, int, int, int]:
    """(comm, utime ticks, stime ticks, starttime ticks) of a /proc/PID/stat line."""
    lparen, rparen = text.index("("), text.rindex(")")
    comm = text[lparen + 1 : rparen]
    rest = text[rparen + 2 :].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    return comm, int(rest[11]), int(rest[12]), int(rest[19])


def parse_tlb_reasons(format_text: str) -> dict[int, str]:
    """Reason number -> name from the tracepoint's __print_symbolic table."""
    reasons: dict[int, str] = {}
    for number, text in re.findall(r'\{\s*(\d+),\s*"([^"]*)"\s*\}', format_text):
        slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
        reasons[int(number)] = TLB_REASON_NAMES.get(int(number), slug)
    return reasons


def parse_cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def parse_numa_maps_kib(text: str) -> dict[str, int]:
    """KiB per node of a /proc/PID/numa_maps (N<node>=<pages> x kernelpagesize_kB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        page_kib = 4
        for f in fields:
            if f.startswith("kernelpagesize_kB="):
                page_kib = int(f.partition("=")[2])
        for f in fields:
            if f.startswith("N") and "=" in f and f[1:].partition("=")[0].isdigit():
                node, _, pages = f[1:].partition("=")
                out[node] = out.get(node, 0) + int(pages) * page_kib
    return out


def parse_node_free_kib(text: str) -> int:
    match = re.search(r"MemFree:\s+(\d+)\s+kB", text)
    if match is None:
        raise CollectError("no MemFree line in a node meminfo")
    return int(match.group(1))


@dataclass(frozen=True)
class Track:
    """Tasks whose CPU time is summed under one label: by comm prefix, cmdline
    substring or pid."""

    label: str
    kind: str  # "comm", "cmdline" or "pid"
    value: str

    @classmethod
    def parse(cls, spec: str) -> Track:
        label, eq, rest = spec.partition("=")
        kind, colon, value = rest.partition(":")
        if not (eq and colon and label and value) or kind not in (
            "comm",
            "cmdline",
            "pid",
        ):
            raise argparse.ArgumentTypeError(
                f"--track {spec!r}: want LABEL=comm:PREFIX, LABEL=cmdline:SUBSTRING "
                "or LABEL=pid:PID"
            )
        if kind == "pid" and not value.isdigit():
            raise argparse.ArgumentTypeError(f"--track {spec!r}: pid must be a number")
        return cls(label, kind, value)


@dataclass
class _TaskCpu:
    base_user: int
    base_sys: int
    user: int = 0
    sys: int = 0


@dataclass
class CpuTracker:
    """Cumulative CPU time per label since `start`, across tasks that come and go.

    A task seen for the first time counts from the collector's start if it started
    before it, else from its own start; a task that exits keeps what it used.
    """

    proc: Path
    tracks: list[Track]
    tick_hz: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))
    start_ticks: int = 0
    _tasks: dict[tuple[str, int], _TaskCpu] = field(default_factory=dict)

    def __post_init__(self) -> None:
        uptime = float((self.proc / "uptime").read_text().split()[0])
        self.start_ticks = int(uptime * self.tick_hz)

    def _matches(self, pid: int) -> list[str]:
        labels: list[str] = []
        comm: str | None = None
        cmdline: str | None = None
        for track in self.tracks:
            if track.kind == "pid":
                if int(track.value) == pid:
                    labels.append(track.label)
            elif track.kind == "comm":
                if comm is None:
                    comm = (self.proc / str(pid) / "comm").read_text().rstrip("\n")
                if comm.startswith(track.value):
                    labels.append(track.label)
            else:
                if cmdline is None:
                    raw = (self.proc / str(pid) / "cmdline").read_bytes()
                    cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
                if track.value in cmdline:
                    labels.append(track.label)
        return labels

    def numa_kib(self) -> dict[str, dict[str, int]]:
        """{label: {node: KiB}} of the matching processes' memory (numa_maps)."""
        out: dict[str, dict[str, int]] = {t.label: {} for t in self.tracks}
        for entry in self.proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                labels = self._matches(int(entry.name))
                if not labels:
                    continue
                per_node = parse_numa_maps_kib((entry / "numa_maps").read_text())
            except (FileNotFoundError, ProcessLookupError):
                continue
            for label in labels:
                for node, kib in per_node.items():
                    out[label][node] = out[label].get(node, 0) + kib
        return out

    def sample(self) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
        """({label: {"user_s", "sys_s"}}, {label: live task count})."""
        live: dict[str, int] = {t.label: 0 for t in self.tracks}
        for entry in self.proc.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                labels = self._matches(pid)
                if not labels:
                    continue
                _, utime, stime, started = parse_stat_times(
                    (entry / "stat").read_text()
                )
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited between listing and reading
            for label in labels:
                live[label] += 1
                task = self._tasks.get((label, pid))
                if task is None:
                    before = started < self.start_ticks
                    task = _TaskCpu(utime if before else 0, stime if before else 0)
                    self._tasks[(label, pid)] = task
                task.user, task.sys = utime, stime
        cpu = {t.label: {"user_s": 0.0, "sys_s": 0.0} for t in self.tracks}
        for (label, _), task in self._tasks.items():
            cpu[label]["user_s"] += (task.user - task.base_user) / self.tick_hz
            cpu[label]["sys_s"] += (task.sys - task.base_sys) / self.tick_hz
        for values in cpu.values():
            for key in values:
                values[key] = round(values[key], 3)
        return cpu, live


class TlbCounter:
    """tlb:tlb_flush counted per reason on every online CPU by perf, in-kernel."""

    def __init__(self, tracefs: Path, sysfs: Path) -> None:
        event = tracefs / "events" / "tlb" / "tlb_flush"
        try:
            tp_id = int((event / "id").read_text())
            self.reasons = parse_tlb_reasons((event / "format").read_text())
            cpus = parse_cpulist((sysfs / "devices/system/cpu/online").read_text())
        except OSError as err:
            raise CollectError(
                f"tracepoint tlb:tlb_flush unreadable under {tracefs}: {err}"
            ) from err
        if not self.reasons:
            raise CollectError("tlb:tlb_flush format has no reason table")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        attr = struct.pack("<IIQ", _PERF_TYPE_TRACEPOINT, _ATTR_BYTES, tp_id)
        attr += bytes(_ATTR_BYTES - len(attr))  # counting, enabled, all flags 0
        self._fds: dict[int, list[int]] = {r: [] for r in self.reasons}
        try:
            for reason in self.reasons:
                filt = ctypes.c_char_p(f"reason == {reason}".encode())
                for cpu in cpus:
                    fd = libc.syscall(
                        _NR_PERF_EVENT_OPEN, attr, -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC
                    )
                    if fd < 0:
                        code = ctypes.get_errno()
                        raise CollectError(
                            f"perf_event_open(tlb:tlb_flush, cpu {cpu}): "
                            f"{os.strerror(code)} (needs root or "
                            "perf_event_paranoid <= -1)"
                        )
                    self._fds[reason].append(fd)
                    if libc.ioctl(fd, _PERF_EVENT_IOC_SET_FILTER, filt) != 0:
                        code = ctypes.get_errno()
                        raise CollectError(
                            f"tracepoint filter on tlb:tlb_flush: {os.strerror(code)}"
                        )
        except CollectError:
            self.close()
            raise

    def counts(self) -> dict[str, int]:
        return {
            self.reasons[reason]: sum(
                struct.unpack("<Q", os.read(fd, 8))[0] for fd in fds
            )
            for reason, fds in self._fds.items()
        }

    def close(self) -> None:
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
            fds.clear()


def _nodes(sysfs: Path) -> list[int]:
    path = sysfs / "devices/system/node/has_memory"
    return parse_cpulist(path.read_text()) if path.is_file() else []


def _mount_tracefs(tracefs: Path) -> str | None:
    if (tracefs / "events").is_dir():
        return None
    import subprocess

    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(tracefs)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else proc.stderr.strip() or "mount failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ht-collect.py",
        description="Tiering counters, mechanism CPU time and TLB flushes as JSON "
        "lines, one per interval, all counted since the collector started.",
        epilog="example: ht-collect.py --interval-s 1 --track "
        "hypertier=cmdline:hypertier-guest --track workload=pid:812",
    )
    parser.add_argument("--interval-s", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, default=0.0, help="0: until TERM")
    processes = "LABEL=comm:PREFIX | LABEL=cmdline:SUBSTRING | LABEL=pid:PID"
    for flag, help_text in (
        ("--track", f"{processes} (repeatable; kswapd and kdamond are always tracked)"),
        (
            "--numa-maps",
            f"{processes}: report these processes' memory per node from "
            "/proc/PID/numa_maps (repeatable)",
        ),
    ):
        parser.add_argument(
            flag, type=Track.parse, action="append", default=[], help=help_text
        )
    parser.add_argument("--no-tlb", action="store_true", help="skip TLB counting")
    parser.add_argument("--proc", type=Path, default=Path("/proc"))
    parser.add_argument("--sys", type=Path, default=Path("/sys"))
    parser.add_argument("--tracefs", type=Path, default=Path("/sys/kernel/tracing"))
    args = parser.parse_args(argv)
    if args.interval_s <= 0:
        parser.error("--interval-s must be > 0")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    tracks = [Track.parse(s) for s in DEFAULT_TRACKS] + args.track
    cpu = CpuTracker(args.proc, tracks)
    numa = CpuTracker(args.proc, args.numa_maps) if args.numa_maps else None
    vmstat0 = parse_vmstat((args.proc / "vmstat").read_text(), VMSTAT_PREFIXES)
    tlb: TlbCounter | None = None
    tlb_error: str | None = "disabled by --no-tlb" if args.no_tlb else None
    if not args.no_tlb:
        mount_error = _mount_tracefs(args.tracefs)
        try:
            tlb = TlbCounter(args.tracefs, args.sys)
        except CollectError as err:
            tlb_error = str(err) + (f"; mount: {mount_error}" if mount_error else "")
    tlb0 = tlb.counts() if tlb else {}
    nodes = _nodes(args.sys)
    t0 = time.monotonic()
    start: dict[str, Any] = {
        "type": "start",
        "pid": os.getpid(),
        "unix_s": round(time.time(), 3),
        "interval_s": args.interval_s,
        "tracks": {t.label: f"{t.kind}:{t.value}" for t in tracks},
        "numa_maps": {t.label: f"{t.kind}:{t.value}" for t in args.numa_maps},
        "vmstat_counters": sorted(vmstat0),
        "tlb_reasons": sorted(tlb.reasons.values()) if tlb else [],
        "tlb_error": tlb_error,
        "nodes": nodes,
    }
    print(json.dumps(start), flush=True)
    deadline = t0
    while True:
        deadline += args.interval_s
        stop.wait(max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        last = stop.is_set() or (args.duration_s > 0 and now - t0 >= args.duration_s)
        vmstat = parse_vmstat((args.proc / "vmstat").read_text(), VMSTAT_PREFIXES)
        cpu_s, tasks = cpu.sample()
        record: dict[str, Any] = {
            "type": "end" if last else "sample",
            "t_s": round(now - t0, 3),
            "unix_s": round(time.time(), 3),
            "vmstat": {k: v - vmstat0.get(k, 0) for k, v in vmstat.items()},
            "cpu_s": cpu_s,
            "tasks": tasks,
            "tlb_flush": (
                {k: v - tlb0.get(k, 0) for k, v in tlb.counts().items()}
                if tlb
                else None
            ),
            "numa_kib": numa.numa_kib() if numa else {},
            "node_free_kib": {
                str(n): parse_node_free_kib(
                    (args.sys / f"devices/system/node/node{n}/meminfo").read_text()
                )
                for n in nodes
            },
        }
        print(json.dumps(record), flush=True)
        if last:
            break
    if tlb:
        tlb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
