"""The real guest backend: perf_event_open(2) ring buffers, move_pages(2) via ctypes,
/proc/<pid>/{maps,pagemap,clear_refs}, /sys/devices/system/node, the virtio-serial
port to the host agent. The only agent_guest module that touches the kernel.

Man pages: perf_event_open(2), move_pages(2), proc(5); kernel docs:
Documentation/admin-guide/mm/soft-dirty.rst, .../idle_page_tracking.rst.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import platform
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent_guest import perf_abi as abi
from agent_guest.backend import (
    PAGE_SIZE,
    SOURCE_CAPABILITY,
    AccessSamples,
    Capability,
    MoveResult,
    NumaNode,
    ProcessInfo,
    SamplerSettings,
    SampleSource,
    Tier,
    Vma,
)
from agent_guest.config import FAULT_EVENTS
from agent_guest.errors import (
    AccessDenied,
    BackendError,
    ConfigError,
    NoSuchProcess,
    Unsupported,
)
from hypertier_common.cpulist import parse_cpulist

__all__ = ["FAULT_EVENTS", "LinuxGuestBackend"]

log = logging.getLogger(__name__)

# Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic).
_SYSCALLS = {
    "x86_64": {"perf_event_open": 298, "move_pages": 279},
    "aarch64": {"perf_event_open": 241, "move_pages": 239},
}
MPOL_MF_MOVE = 1 << 1  # pages mapped only by the target
MPOL_MF_MOVE_ALL = 1 << 2  # shared pages too; needs CAP_SYS_NICE
_UNSET = np.iinfo(np.int32).min
_MAX_UNSENT = 1 << 16  # bytes queued for a host channel nobody reads
_PM_PRESENT = np.uint64(1 << 63)
_PM_SOFT_DIRTY = np.uint64(1 << 55)
_PM_PFN_MASK = np.uint64((1 << 55) - 1)
_SKIP_VMAS = ("[vsyscall]", "[vvar]", "[vdso]", "[vvar_vclock]")
_MEMINFO = re.compile(rb"Node \d+ (MemTotal|MemFree):\s+(\d+) kB")


@dataclass
class _Ring:
    """One perf event fd with its mmap'd ring."""

    fd: int
    mm: mmap.mmap
    data: npt.NDArray[np.uint8]
    sample_type: int
    raw_addr_offset: int = -1

    def drain(self) -> npt.NDArray[np.uint8]:
        (head,) = struct.unpack_from("<Q", self.mm, abi.MMAP_DATA_HEAD)
        (tail,) = struct.unpack_from("<Q", self.mm, abi.MMAP_DATA_TAIL)
        # data_head is read before the data (x86-TSO keeps load order; other
        # architectures would need smp_rmb here, which CPython cannot issue).
        out = abi.ring_slice(self.data, tail, head)
        # Only after copying do we hand the bytes back to the kernel.
        struct.pack_into("<Q", self.mm, abi.MMAP_DATA_TAIL, head)
        return out

    def close(self) -> None:
        del self.data
        self.mm.close()
        os.close(self.fd)


@dataclass
class _Session:
    source: SampleSource
    pids: frozenset[int]
    rings: list[_Ring] = field(default_factory=list)
    scan_pids: tuple[int, ...] = ()


class LinuxGuestBackend:
    """GuestBackend over the running Linux kernel.

    ``root`` prefixes every /proc and /sys path (tests use captured trees);
    ``fault_event`` picks how the PAGE_FAULT source counts faults: the
    ``software`` perf event PERF_COUNT_SW_PAGE_FAULTS (any architecture) or the
    ``tracepoint`` exceptions:page_fault_user (x86, via tracefs);
    ``induce_write_faults`` re-arms soft-dirty (clear_refs 4) on the targets at
    every drain, so steady-state writes fault once per page per window and are
    sampled (cost: one minor fault per written page per window plus a TLB flush
    per target; reads are seen only through NUMA-balancing hinting faults);
    ``move_shared_pages`` uses MPOL_MF_MOVE_ALL (CAP_SYS_NICE) so pages shared
    with other processes (fork, shmem) move too, instead of failing -EACCES.
    """

    def __init__(
        self,
        root: Path | str = Path("/"),
        channel_path: str = "/dev/virtio-ports/org.hypertier.0",
        fault_event: str = "software",
        induce_write_faults: bool = True,
        tracefs: str = "sys/kernel/tracing",
        max_scan_pages: int = 1 << 20,
        move_shared_pages: bool = True,
    ) -> None:
        if fault_event not in FAULT_EVENTS:
            raise ConfigError(f"fault_event {fault_event!r} not one of {FAULT_EVENTS}")
        self._root = Path(root)
        self._channel_path = Path(channel_path)
        self._fault_event = fault_event
        self._induce = induce_write_faults
        self._tracefs = self._root / tracefs
        self._max_scan_pages = max_scan_pages
        self._move_flags = MPOL_MF_MOVE_ALL if move_shared_pages else MPOL_MF_MOVE
        self._channel_fd: int | None = None
        self._unsent = bytearray()
        self._session: _Session | None = None
        self._caps: frozenset[Capability] | None = None
        self._soft_dirty = False
        self._no_rearm: set[int] = set()
        self._reasons: dict[Capability, str] = {}
        self._nr = _SYSCALLS.get(platform.machine())
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    # ------------------------------------------------------------ capabilities
    def _p(self, rel: str) -> Path:
        return self._root / rel

    def capabilities(self) -> frozenset[Capability]:
        """Detected from sysfs/tracefs and a probe perf_event_open, once."""
        if self._caps is None:
            self._caps = self._detect()
        return self._caps

    def unavailable(self) -> Mapping[Capability, str]:
        """Why each missing capability is missing (after ``capabilities()``)."""
        self.capabilities()
        return dict(self._reasons)

    def _detect(self) -> frozenset[Capability]:
        caps: set[Capability] = set()
        devs = self._p("sys/bus/event_source/devices")
        present = {d.name for d in devs.iterdir()} if devs.is_dir() else set()
        why = self._reasons
        if self._nr is None:
            why[Capability.PAGE_FAULT_SAMPLING] = (
                f"no syscall table for {platform.machine()}"
            )
        if self._pebs_pmu(present):
            caps.add(Capability.PEBS)
        else:
            why[Capability.PEBS] = (
                f"no cpu PMU with events/mem-loads in {devs} ({sorted(present)})"
            )
        if "ibs_op" in present:
            caps.add(Capability.IBS)
        else:
            why[Capability.IBS] = f"no ibs_op PMU in {devs}"
        if "software" in present and self._nr is not None:
            # A captured tree (tests) cannot be probed; the live kernel is.
            err = self._probe_sw() if self._root == Path("/") else None
            if err is None:
                caps.add(Capability.PAGE_FAULT_SAMPLING)
            else:
                why[Capability.PAGE_FAULT_SAMPLING] = err
        else:
            why[Capability.PAGE_FAULT_SAMPLING] = f"no software PMU in {devs}"
        if "tracepoint" in present and self._tracepoint_id() is not None:
            caps.add(Capability.TRACEPOINTS)
        else:
            why[Capability.TRACEPOINTS] = (
                f"{self._tracefs}/events/exceptions/page_fault_user/id not readable "
                "(mount tracefs: mount -t tracefs nodev /sys/kernel/tracing)"
            )
        self._soft_dirty = self._soft_dirty_ok()
        if not self._soft_dirty:
            self._induce = False  # clear_refs 4 would be a no-op
        if self._soft_dirty:
            caps.add(Capability.SOFT_DIRTY_SCAN)
        else:
            idle = self._p("sys/kernel/mm/page_idle/bitmap").exists()
            why[Capability.SOFT_DIRTY_SCAN] = (
                "no soft-dirty bit in /proc/self/pagemap (CONFIG_MEM_SOFT_DIRTY); "
                + (
                    "page_idle exists but needs PFNs (CAP_SYS_ADMIN), not implemented"
                    if idle
                    else "no /sys/kernel/mm/page_idle (CONFIG_IDLE_PAGE_TRACKING)"
                )
            )
        if self._p("sys/devices/system/node").is_dir() and self._nr is not None:
            caps.add(Capability.MOVE_PAGES)
        if self._channel_path.exists():
            caps.add(Capability.HOST_CHANNEL)
        else:
            why[Capability.HOST_CHANNEL] = f"{self._channel_path} does not exist"
        if self._fault_event == "tracepoint" and Capability.TRACEPOINTS not in caps:
            caps.discard(Capability.PAGE_FAULT_SAMPLING)
            why[Capability.PAGE_FAULT_SAMPLING] = why[Capability.TRACEPOINTS]
        return frozenset(caps)

    def _pebs_pmu(self, present: set[str]) -> str | None:
        for name in ("cpu", "cpu_core"):  # cpu_core: hybrid Alder Lake and later
            if (
                name in present
                and self._p(
                    f"sys/bus/event_source/devices/{name}/events/mem-loads"
                ).exists()
            ):
                return name
        return None

    def _probe_sw(self) -> str | None:
        attr = abi.encode_attr(
            type_=abi.TYPE_SOFTWARE,
            config=abi.SW_PAGE_FAULTS,
            sample_period=1000,
            sample_type=abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_ADDR,
        )
        try:
            fd = self._perf_open(attr, -1, 0)
        except (Unsupported, AccessDenied) as err:
            return str(err)
        os.close(fd)
        return None

    def _soft_dirty_ok(self) -> bool:
        """CONFIG_MEM_SOFT_DIRTY: after clear_refs 4, a written page reads bit 55."""
        if self._root != Path("/"):
            return self._p("proc/self/pagemap").exists()
        buf = mmap.mmap(-1, PAGE_SIZE)
        try:
            addr = np.frombuffer(buf, np.uint8).ctypes.data
            Path("/proc/self/clear_refs").write_text("4")
            buf[0] = 1
            with open("/proc/self/pagemap", "rb") as f:
                raw = os.pread(f.fileno(), 8, addr // PAGE_SIZE * 8)
            (entry,) = struct.unpack("<Q", raw)
            return bool(entry & (1 << 55))
        except OSError:
            return False
        finally:
            buf.close()

    def _tracepoint_id(self) -> int | None:
        try:
            text = (self._tracefs / "events/exceptions/page_fault_user/id").read_text()
            return int(text)
        except (OSError, ValueError):
            return None

    def _tracepoint_addr_offset(self) -> int:
        fmt = (self._tracefs / "events/exceptions/page_fault_user/format").read_text()
        m = re.search(r"field:unsigned long address;\s*offset:(\d+);", fmt)
        if m is None:
            raise Unsupported(
                "page_fault_user tracepoint", "no address field in format"
            )
        return int(m.group(1))

    # ---------------------------------------------------------------- topology
    def numa_nodes(self) -> Sequence[NumaNode]:
        base = self._p("sys/devices/system/node")
        out = []
        for d in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
            try:
                info = dict(_MEMINFO.findall((d / "meminfo").read_bytes()))
                cpus = parse_cpulist((d / "cpulist").read_text())
            except (OSError, ValueError) as err:
                raise BackendError(f"cannot read {d}: {err}") from err
            total = int(info.get(b"MemTotal", b"0")) * 1024
            free = int(info.get(b"MemFree", b"0")) * 1024
            out.append(
                NumaNode(
                    node=int(d.name[4:]),
                    tier=Tier.FAST if cpus else Tier.SLOW,
                    total_bytes=total,
                    free_bytes=free,
                    has_cpus=bool(cpus),
                )
            )
        return out

    def processes(self) -> Sequence[ProcessInfo]:
        out = []
        for d in self._p("proc").glob("[0-9]*"):
            try:
                statm = (d / "statm").read_text().split()
                rss = int(statm[1]) * PAGE_SIZE
                if rss == 0:
                    continue  # kernel threads
                # comm, cmdline and cgroup paths are bytes, not always UTF-8 (an
                # executable or cgroup named in Latin-1): decode for display.
                comm = (d / "comm").read_bytes().strip()
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                cgroup = (d / "cgroup").read_bytes().strip().rpartition(b":")[2]
            except (OSError, IndexError, ValueError):
                continue  # exited or unreadable: not a candidate
            out.append(
                ProcessInfo(
                    int(d.name),
                    comm.decode(errors="replace"),
                    rss,
                    cmdline.decode(errors="replace"),
                    cgroup.decode(errors="replace"),
                )
            )
        return sorted(out, key=lambda p: p.pid)

    def vmas(self, pid: int) -> Sequence[Vma]:
        """Private writable mappings (heap, anonymous, data) from /proc/pid/maps.

        A mapped file's name is bytes that need not be UTF-8; ``Vma.path`` holds
        it as :func:`os.fsdecode` does (``os.fsencode(path)`` gives the bytes).
        """
        try:
            text = os.fsdecode(self._p(f"proc/{pid}/maps").read_bytes())
        except (FileNotFoundError, ProcessLookupError) as err:
            raise NoSuchProcess(pid) from err
        except PermissionError as err:
            raise AccessDenied(f"/proc/{pid}/maps", "needs ptrace access") from err
        out = []
        # Only "\n" ends a line: splitlines() would also split a name at U+2028.
        for line in text.split("\n"):
            parts = line.split(maxsplit=5)
            if len(parts) < 5:
                continue
            span, perms = parts[0], parts[1]
            path = parts[5] if len(parts) == 6 else ""
            if perms[1] != "w" or perms[3] != "p" or path in _SKIP_VMAS:
                continue
            lo, _, hi = span.partition("-")
            out.append(Vma(int(lo, 16), int(hi, 16), perms, path))
        return out

    # ----------------------------------------------------------------- syscalls
    def _syscall_nr(self, name: str) -> int:
        if self._nr is None:
            raise Unsupported(name, f"no syscall number for {platform.machine()}")
        return self._nr[name]

    def _perf_open(self, attr: bytes, pid: int, cpu: int) -> int:
        buf = ctypes.create_string_buffer(attr, len(attr))
        fd = int(
            self._libc.syscall(
                ctypes.c_long(self._syscall_nr("perf_event_open")),
                buf,
                ctypes.c_int(pid),
                ctypes.c_int(cpu),
                ctypes.c_int(-1),
                ctypes.c_ulong(0),
            )
        )
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        what = f"perf_event_open(pid={pid}, cpu={cpu})"
        if e in (errno.EACCES, errno.EPERM):
            raise AccessDenied(
                what,
                "needs CAP_PERFMON (or root) or kernel.perf_event_paranoid <= 0 "
                "for system-wide events",
            )
        if e == errno.ESRCH:
            raise NoSuchProcess(pid)
        raise Unsupported(what, os.strerror(e))

    def _open_ring(
        self, attr: bytes, cpu: int, ring_pages: int, sample_type: int, raw_off: int
    ) -> _Ring:
        fd = self._perf_open(attr, -1, cpu)
        try:
            mm = mmap.mmap(fd, (1 + ring_pages) * PAGE_SIZE)
        except OSError as err:
            os.close(fd)
            raise BackendError(f"mmap of perf ring on cpu {cpu}: {err}") from err
        data = np.frombuffer(mm, np.uint8, ring_pages * PAGE_SIZE, PAGE_SIZE)
        fcntl.ioctl(fd, abi.IOC_ENABLE, 0)
        return _Ring(fd, mm, data, sample_type, raw_off)

    def _event_attrs(self, s: SamplerSettings) -> list[tuple[bytes, int, int]]:
        """(attr, sample_type, raw_addr_offset) of each event to open per CPU."""
        basic = abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_ADDR
        if s.source is SampleSource.PEBS:
            devs = self._p("sys/bus/event_source/devices")
            pmu = self._pebs_pmu({d.name for d in devs.iterdir()})
            assert pmu is not None
            fmt = {f.name: f.read_text() for f in (devs / pmu / "format").iterdir()}
            ptype = int((devs / pmu / "type").read_text())
            st = basic | abi.SAMPLE_WEIGHT
            out = []
            for ev in ("mem-loads", "mem-stores"):
                path = devs / pmu / "events" / ev
                if not path.exists():
                    continue
                spec = re.sub(r"ldlat=\w+", f"ldlat={s.ldlat_cycles}", path.read_text())
                c, c1, c2 = abi.parse_event_spec(spec, fmt)
                attr = abi.encode_attr(
                    type_=ptype,
                    config=c,
                    config1=c1,
                    config2=c2,
                    sample_period=s.period,
                    sample_type=st,
                    precise_ip=2,
                )
                out.append((attr, st, -1))
            return out
        if s.source is SampleSource.IBS:
            devs = self._p("sys/bus/event_source/devices")
            ptype = int((devs / "ibs_op" / "type").read_text())
            # ADDR for IBS op samples: Linux 6.1 (perf/x86/amd: "Add support for
            # PERF_SAMPLE_ADDR"); IBS periods are multiples of 16.
            period = max(0x10, s.period // 16 * 16)
            attr = abi.encode_attr(
                type_=ptype, config=0, sample_period=period, sample_type=basic
            )
            return [(attr, basic, -1)]
        if s.source is SampleSource.PAGE_FAULT:
            if self._fault_event == "tracepoint":
                tid = self._tracepoint_id()
                if tid is None:
                    raise Unsupported(
                        "page_fault_user tracepoint",
                        self._reasons.get(Capability.TRACEPOINTS, "tracefs missing"),
                    )
                st = abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_RAW
                attr = abi.encode_attr(
                    type_=abi.TYPE_TRACEPOINT,
                    config=tid,
                    sample_period=s.period,
                    sample_type=st,
                    exclude_kernel=False,
                )
                return [(attr, st, self._tracepoint_addr_offset())]
            attr = abi.encode_attr(
                type_=abi.TYPE_SOFTWARE,
                config=abi.SW_PAGE_FAULTS,
                sample_period=s.period,
                sample_type=basic,
            )
            return [(attr, basic, -1)]
        raise Unsupported(f"perf events for {s.source.value}", "not a perf source")

    def _cpus(self) -> tuple[int, ...]:
        return parse_cpulist(self._p("sys/devices/system/cpu/online").read_text())

    # ---------------------------------------------------------------- sampling
    def start_sampling(self, pids: Sequence[int], settings: SamplerSettings) -> None:
        """One event (two for PEBS: loads and stores) per online CPU, pid=-1,
        filtered to ``pids`` when read; SOFT_DIRTY scans page tables instead."""
        cap = SOURCE_CAPABILITY[settings.source]
        if cap not in self.capabilities():
            raise Unsupported(
                f"sample source {settings.source.value}",
                self._reasons.get(cap, "not offered by this machine"),
            )
        session = _Session(settings.source, frozenset(pids))
        if settings.source is SampleSource.SOFT_DIRTY:
            self.stop_sampling()
            session.scan_pids = tuple(pids)
            self._session = session
            self._rearm(session.scan_pids)
            return
        # Make before break: the new events open while the old ones still exist.
        # Closing the last event of a kind first drops the kernel's static key
        # for it (perf_swevent_enabled, the tracepoint's key) to zero and the
        # open turns it on again: two rounds of live kernel text patching, each
        # with IPIs to every CPU, per period change. Under QEMU TCG with two
        # vCPUs that patching can race with a page fault on the other vCPU and
        # oops the guest ("Oops: int3" in do_user_addr_fault, 6.12).
        try:
            for attr, st, raw_off in self._event_attrs(settings):
                for cpu in self._cpus():
                    session.rings.append(
                        self._open_ring(attr, cpu, settings.ring_pages, st, raw_off)
                    )
        except BaseException:
            for ring in session.rings:
                ring.close()
            raise
        self.stop_sampling()
        self._session = session
        if settings.source is SampleSource.PAGE_FAULT and self._induce:
            self._rearm(tuple(pids))

    def _rearm(self, pids: Sequence[int]) -> None:
        """Clear soft-dirty (and write-protect) the targets' pages: clear_refs 4."""
        for pid in pids:
            if pid in self._no_rearm:
                continue
            try:
                self._p(f"proc/{pid}/clear_refs").write_text("4")
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited; the daemon drops it at its next refresh
            except PermissionError:
                # Another user's process without CAP_DAC_OVERRIDE: sample it
                # without induced faults rather than fail the whole drain.
                self._no_rearm.add(pid)
                log.warning(
                    "cannot write /proc/%d/clear_refs (needs CAP_DAC_OVERRIDE for "
                    "other users' processes); no soft-dirty tracking for it",
                    pid,
                )

    def read_samples(self) -> AccessSamples:
        s = self._session
        if s is None:
            raise Unsupported("read_samples", "sampling was not started")
        if s.source is SampleSource.SOFT_DIRTY:
            return self._scan_soft_dirty(s)
        pids, addrs, times, weights = [], [], [], []
        lost = throttled = 0
        for ring in s.rings:
            d = abi.decode(ring.drain(), ring.sample_type, ring.raw_addr_offset)
            pids.append(d.pid)
            addrs.append(d.addr)
            times.append(d.time_ns)
            weights.append(
                d.weight if d.weight.shape[0] else np.zeros(d.addr.shape[0], np.uint32)
            )
            lost += d.lost
            throttled += d.throttled
        pid = np.concatenate(pids) if pids else np.empty(0, np.int32)
        batch = AccessSamples(
            s.source,
            pid,
            np.concatenate(addrs) if addrs else np.empty(0, np.uint64),
            np.concatenate(times) if times else np.empty(0, np.uint64),
            np.concatenate(weights) if weights else np.empty(0, np.uint32),
            lost,
            throttled,
        )
        keep = np.isin(batch.pid, np.fromiter(s.pids, np.int32)) if s.pids else None
        if keep is not None and not keep.all():
            batch = AccessSamples(
                s.source,
                batch.pid[keep],
                batch.addr[keep],
                batch.time_ns[keep],
                batch.weight[keep],
                lost,
                throttled,
            )
        if s.source is SampleSource.PAGE_FAULT and self._induce:
            self._rearm(tuple(s.pids))
        return batch

    def _scan_soft_dirty(self, s: _Session) -> AccessSamples:
        """Pages written since the last scan (pagemap bit 55), then re-arm.

        Cost: reading 8 bytes of pagemap per page of each writable mapping (bounded
        by ``max_scan_pages`` per process) plus one write fault per written page per
        window. Sees writes only: reads leave no soft-dirty trace.
        """
        pids, addrs = [], []
        for pid in s.scan_pids:
            try:
                vmas = self.vmas(pid)
                found = self._dirty_pages(pid, vmas)
            except NoSuchProcess:
                continue
            addrs.append(found)
            pids.append(np.full(found.shape[0], pid, np.int32))
        self._rearm(s.scan_pids)
        addr = np.concatenate(addrs) if addrs else np.empty(0, np.uint64)
        n = addr.shape[0]
        return AccessSamples(
            s.source,
            np.concatenate(pids) if pids else np.empty(0, np.int32),
            addr,
            np.zeros(n, np.uint64),
            np.zeros(n, np.uint32),
        )

    def _dirty_pages(self, pid: int, vmas: Sequence[Vma]) -> npt.NDArray[np.uint64]:
        path = self._p(f"proc/{pid}/pagemap")
        found = []
        budget = self._max_scan_pages
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise NoSuchProcess(pid) from err
        try:
            for v in vmas:
                n = min(v.size_bytes // PAGE_SIZE, budget)
                if n <= 0:
                    break
                budget -= n
                raw = os.pread(fd, n * 8, v.start // PAGE_SIZE * 8)
                ent = np.frombuffer(raw, np.uint64)
                hit = np.flatnonzero(
                    ((ent & _PM_PRESENT) != 0) & ((ent & _PM_SOFT_DIRTY) != 0)
                ).astype(np.uint64)
                found.append(np.uint64(v.start) + hit * np.uint64(PAGE_SIZE))
        except ProcessLookupError as err:
            raise NoSuchProcess(pid) from err
        finally:
            os.close(fd)
        return np.concatenate(found) if found else np.empty(0, np.uint64)

    def stop_sampling(self) -> None:
        if self._session is not None:
            for ring in self._session.rings:
                ring.close()
            self._session = None

    # -------------------------------------------------------------- move_pages
    def _move(
        self, pid: int, addrs: npt.NDArray[np.uint64], node: int | None
    ) -> npt.NDArray[np.int32]:
        pages = np.ascontiguousarray(addrs, np.uint64) & ~np.uint64(PAGE_SIZE - 1)
        n = int(pages.shape[0])
        status = np.full(n, _UNSET, np.int32)
        if n == 0:
            return status
        nodes = np.full(n, -1 if node is None else node, np.int32)
        rc = int(
            self._libc.syscall(
                ctypes.c_long(self._syscall_nr("move_pages")),
                ctypes.c_int(pid),
                ctypes.c_ulong(n),
                ctypes.c_void_p(pages.ctypes.data),
                ctypes.c_void_p(None if node is None else nodes.ctypes.data),
                ctypes.c_void_p(status.ctypes.data),
                ctypes.c_int(self._move_flags),
            )
        )
        if rc < 0:
            e = ctypes.get_errno()
            if e == errno.ESRCH:
                raise NoSuchProcess(pid)
            if e in (errno.EPERM, errno.EACCES):
                raise AccessDenied(
                    f"move_pages(pid={pid})", "needs CAP_SYS_NICE/ptrace"
                )
            if e not in (errno.ENODEV, errno.EINVAL, errno.ENOMEM, errno.EFAULT):
                raise BackendError(f"move_pages(pid={pid}): {os.strerror(e)}")
            # ENODEV: target node has no memory; EINVAL: node id out of range.
            # Pages before the failing chunk have real statuses; the rest get -e.
            status[status == _UNSET] = -e
        return status

    def page_nodes(
        self, pid: int, addrs: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.int32]:
        return self._move(pid, addrs, None)

    def move_pages(
        self, pid: int, addrs: npt.NDArray[np.uint64], node: int
    ) -> MoveResult:
        before = self._move(pid, addrs, None)
        status = self._move(pid, addrs, node)
        moved = int(np.count_nonzero((status == node) & (before != node)))
        neg = -status[status < 0]
        codes, counts = np.unique(neg, return_counts=True)
        failures = {int(c): int(k) for c, k in zip(codes, counts, strict=True)}
        return MoveResult(int(status.shape[0]), moved, status, failures)

    # ------------------------------------------------------------ host channel
    def _channel(self) -> int:
        if self._channel_fd is None:
            try:
                self._channel_fd = os.open(
                    self._channel_path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY
                )
            except FileNotFoundError as err:
                raise Unsupported(
                    "host channel", f"{self._channel_path} missing"
                ) from err
            except PermissionError as err:
                raise AccessDenied(
                    str(self._channel_path), "needs group hypertier"
                ) from err
        return self._channel_fd

    def channel_send(self, line: bytes) -> None:
        """Queue ``line`` and write what the port takes now.

        A virtio-serial port whose host end is not read fills up; the rest of a
        partly written line goes out with the next call, so the host never sees
        a torn line. Raises BackendError (line dropped) once ``_MAX_UNSENT``
        bytes wait, or on a write error.
        """
        fd = self._channel()
        if len(self._unsent) + len(line) > _MAX_UNSENT:
            raise BackendError(
                f"host channel full ({len(self._unsent)} bytes unsent); "
                "host agent not reading; message dropped"
            )
        self._unsent += line
        try:
            while self._unsent:
                del self._unsent[: os.write(fd, self._unsent)]
        except BlockingIOError:
            return
        except OSError as err:
            raise BackendError(f"host channel write: {err}") from err

    def channel_recv(self) -> bytes:
        fd = self._channel()
        chunks = []
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append(data)
        except BlockingIOError:
            pass
        except OSError as err:
            raise BackendError(f"host channel read: {err}") from err
        return b"".join(chunks)

    # ----------------------------------------------------------------- counters
    def cpu_time_s(self) -> float:
        # clock_gettime(CLOCK_PROCESS_CPUTIME_ID): ns resolution. os.times() ticks
        # at 1/CLK_TCK (10 ms), too coarse for a 0.5 % budget over 1 s windows.
        return time.process_time()

    def counters(self) -> Mapping[str, int]:
        out = {}
        try:
            text = self._p("proc/vmstat").read_text()
        except OSError as err:
            raise BackendError(f"cannot read /proc/vmstat: {err}") from err
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith(
                ("nr_tlb_", "pgmigrate_", "numa_", "pgpromote_", "pgdemote_")
            ):
                out[name] = int(value)
        return out

    def close(self) -> None:
        self.stop_sampling()
        if self._channel_fd is not None:
            os.close(self._channel_fd)
            self._channel_fd = None
