"""The real guest backend: LinuxGuestBackend over perf_event_open(2) rings,
move_pages(2), /proc and /sys, and the virtio-serial port to the host agent. The
agent_guest modules that touch the kernel are this one and its ``linux_*`` parts.

Man pages: perf_event_open(2), move_pages(2), proc(5); kernel docs:
Documentation/admin-guide/mm/soft-dirty.rst, .../idle_page_tracking.rst.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent_guest import linux_procfs as procfs
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
    Vma,
)
from agent_guest.config import FAULT_EVENTS
from agent_guest.errors import NoSuchProcess
from agent_guest.linux_channel import HostChannel
from agent_guest.linux_perf import PerfEvents, Ring
from agent_guest.linux_softdirty import SoftDirty
from agent_guest.linux_syscalls import (
    MPOL_MF_MOVE,
    MPOL_MF_MOVE_ALL,
    MPOL_PREFERRED,
    Syscalls,
)
from hypertier_common.arrays import I32, U64
from hypertier_common.errors import ConfigError, Unsupported

__all__ = ["LinuxGuestBackend"]

_OWN_CHUNK = 65536  # pages per move_pages(2) call of keep_own_memory


@dataclass
class _Session:
    settings: SamplerSettings
    pids: frozenset[int]
    rings: list[Ring] = field(default_factory=list)
    scan_pids: tuple[int, ...] = ()
    cpus: tuple[int, ...] = ()
    paused: bool = False

    @property
    def source(self) -> SampleSource:
        return self.settings.source


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
        self._fault_event = fault_event
        self._induce = induce_write_faults
        self._move_flags = MPOL_MF_MOVE_ALL if move_shared_pages else MPOL_MF_MOVE
        self._sys = Syscalls()
        self._perf = PerfEvents(
            self._root, self._root / tracefs, fault_event, self._sys
        )
        self._soft_dirty = SoftDirty(self._root, max_scan_pages)
        self._channel = HostChannel(Path(channel_path))
        self._session: _Session | None = None
        self._caps: frozenset[Capability] | None = None
        self._reasons: dict[Capability, str] = {}

    # ------------------------------------------------------------ capabilities
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
        devs = self._perf.devices
        present = self._perf.pmus()
        why = self._reasons
        if not self._sys.known:
            why[Capability.PAGE_FAULT_SAMPLING] = (
                f"no syscall table for {self._sys.machine}"
            )
        if self._perf.pebs_pmu(present):
            caps.add(Capability.PEBS)
        else:
            why[Capability.PEBS] = (
                f"no cpu PMU with events/mem-loads in {devs} ({sorted(present)})"
            )
        if "ibs_op" in present:
            caps.add(Capability.IBS)
        else:
            why[Capability.IBS] = f"no ibs_op PMU in {devs}"
        if "software" in present and self._sys.known:
            # A captured tree (tests) cannot be probed; the live kernel is.
            err = self._perf.probe_software() if self._root == Path("/") else None
            if err is None:
                caps.add(Capability.PAGE_FAULT_SAMPLING)
            else:
                why[Capability.PAGE_FAULT_SAMPLING] = err
        else:
            why[Capability.PAGE_FAULT_SAMPLING] = f"no software PMU in {devs}"
        if "tracepoint" in present and self._perf.tracepoint_id() is not None:
            caps.add(Capability.TRACEPOINTS)
        else:
            why[Capability.TRACEPOINTS] = (
                f"{self._perf.tracefs}/events/exceptions/page_fault_user/id not "
                "readable (mount tracefs: mount -t tracefs nodev /sys/kernel/tracing)"
            )
        if self._soft_dirty.supported():
            caps.add(Capability.SOFT_DIRTY_SCAN)
        else:
            self._induce = False  # clear_refs 4 would be a no-op
            idle = (self._root / "sys/kernel/mm/page_idle/bitmap").exists()
            why[Capability.SOFT_DIRTY_SCAN] = (
                "no soft-dirty bit in /proc/self/pagemap (CONFIG_MEM_SOFT_DIRTY); "
                + (
                    "page_idle exists but needs PFNs (CAP_SYS_ADMIN), not implemented"
                    if idle
                    else "no /sys/kernel/mm/page_idle (CONFIG_IDLE_PAGE_TRACKING)"
                )
            )
        if (self._root / "sys/devices/system/node").is_dir() and self._sys.known:
            caps.add(Capability.MOVE_PAGES)
        if self._channel.path.exists():
            caps.add(Capability.HOST_CHANNEL)
        else:
            why[Capability.HOST_CHANNEL] = f"{self._channel.path} does not exist"
        if self._fault_event == "tracepoint" and Capability.TRACEPOINTS not in caps:
            caps.discard(Capability.PAGE_FAULT_SAMPLING)
            why[Capability.PAGE_FAULT_SAMPLING] = why[Capability.TRACEPOINTS]
        return frozenset(caps)

    # ---------------------------------------------------------------- topology
    def numa_nodes(self) -> Sequence[NumaNode]:
        return procfs.numa_nodes(self._root)

    def processes(self) -> Sequence[ProcessInfo]:
        return procfs.processes(self._root)

    def vmas(self, pid: int) -> Sequence[Vma]:
        """Private writable mappings (heap, anonymous, data) from /proc/pid/maps."""
        return procfs.vmas(self._root, pid)

    def node_bytes(self, pid: int) -> Mapping[int, int]:
        return procfs.node_bytes(self._root, pid)

    # ---------------------------------------------------------------- sampling
    def start_sampling(self, pids: Sequence[int], settings: SamplerSettings) -> None:
        """One event (two for PEBS: loads and stores) per online CPU, pid=-1,
        filtered to ``pids`` when read; SOFT_DIRTY scans page tables instead.

        Events open with the same settings on the same online CPUs (running,
        or paused by :meth:`stop_sampling`) are kept: only the pid filter
        changes."""
        cap = SOURCE_CAPABILITY[settings.source]
        if cap not in self.capabilities():
            raise Unsupported(
                f"sample source {settings.source.value}",
                self._reasons.get(cap, "not offered by this machine"),
            )
        if settings.source is SampleSource.SOFT_DIRTY:
            self._close_rings()
            self._session = _Session(settings, frozenset(pids), scan_pids=tuple(pids))
            self._soft_dirty.rearm(self._session.scan_pids)
            return
        s = self._session
        cpus = tuple(procfs.online_cpus(self._root))
        if s is not None and s.rings and (s.settings, s.cpus) == (settings, cpus):
            if s.paused:
                for ring in s.rings:
                    ring.drain()  # what came in before the pause is stale
                    ring.enable()
                s.paused = False
            s.pids = frozenset(pids)
        else:
            # Make before break: the new events open while the old ones still
            # exist. Closing the last event of a kind first drops the kernel's
            # static key for it (perf_swevent_enabled, the tracepoint's key) to
            # zero and the open turns it on again: two rounds of live kernel text
            # patching, each with IPIs to every CPU, per period change. Under QEMU
            # TCG with two vCPUs that patching can race with a page fault on the
            # other vCPU and oops the guest ("Oops: int3" in do_user_addr_fault,
            # 6.12).
            specs = self._perf.event_specs(
                settings, self._reasons.get(Capability.TRACEPOINTS, "tracefs missing")
            )
            rings = self._perf.open_rings(specs, cpus, settings.ring_pages)
            self._close_rings()
            self._session = _Session(settings, frozenset(pids), rings, cpus=cpus)
        if settings.source is SampleSource.PAGE_FAULT and self._induce:
            self._soft_dirty.rearm(tuple(pids))

    def read_samples(self) -> AccessSamples:
        s = self._session
        if s is None or s.paused:
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
            self._soft_dirty.rearm(tuple(s.pids))
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
                found = self._soft_dirty.dirty_pages(pid, vmas)
            except NoSuchProcess:
                continue
            addrs.append(found)
            pids.append(np.full(found.shape[0], pid, np.int32))
        self._soft_dirty.rearm(s.scan_pids)
        addr = np.concatenate(addrs) if addrs else np.empty(0, np.uint64)
        n = addr.shape[0]
        return AccessSamples(
            s.source,
            np.concatenate(pids) if pids else np.empty(0, np.int32),
            addr,
            np.zeros(n, np.uint64),
            np.zeros(n, np.uint32),
        )

    def stop_sampling(self) -> None:
        """Stop delivering samples. perf events are disabled, not closed, so that
        sampling that starts again with the same settings reopens nothing and the
        kernel's text is not patched each time the last target goes away (see
        :meth:`start_sampling`); :meth:`close` closes them."""
        s = self._session
        if s is None:
            return
        if not s.rings:
            self._session = None
        elif not s.paused:
            for ring in s.rings:
                ring.disable()
            s.paused = True

    def _close_rings(self) -> None:
        if self._session is not None:
            for ring in self._session.rings:
                ring.close()
            self._session = None

    # -------------------------------------------------------------- move_pages
    def page_nodes(self, pid: int, addrs: U64) -> I32:
        return self._sys.move_pages(pid, addrs, None, self._move_flags)

    def move_pages(self, pid: int, addrs: U64, node: int) -> MoveResult:
        before = self._sys.move_pages(pid, addrs, None, self._move_flags)
        status = self._sys.move_pages(pid, addrs, node, self._move_flags)
        moved = int(np.count_nonzero((status == node) & (before != node)))
        neg = -status[status < 0]
        codes, counts = np.unique(neg, return_counts=True)
        failures = {int(c): int(k) for c, k in zip(codes, counts, strict=True)}
        return MoveResult(int(status.shape[0]), moved, status, failures)

    def keep_own_memory(self, node: int) -> int:
        """MPOL_PREFERRED ``node`` for this thread (the daemon's main thread,
        which allocates the agent's tables) and the threads it starts, then
        move_pages(2) of this process's private writable mappings there, pages
        mapped by no other process only (MPOL_MF_MOVE), in chunks."""
        self._sys.set_mempolicy(MPOL_PREFERRED, node)
        pid = os.getpid()
        on_node = 0
        for vma in procfs.vmas(self._root, pid):
            first = np.uint64(vma.start)
            n = vma.size_bytes // PAGE_SIZE
            for lo in range(0, n, _OWN_CHUNK):
                k = min(_OWN_CHUNK, n - lo)
                addr = first + np.arange(lo, lo + k, dtype=np.uint64) * np.uint64(
                    PAGE_SIZE
                )
                status = self._sys.move_pages(pid, addr, node, MPOL_MF_MOVE)
                on_node += int(np.count_nonzero(status == node))
        return on_node

    # ------------------------------------------------------------ host channel
    def channel_send(self, line: bytes) -> None:
        """Queue ``line`` for the host agent (see :meth:`HostChannel.send`)."""
        self._channel.send(line)

    def channel_recv(self) -> bytes:
        return self._channel.recv()

    # ----------------------------------------------------------------- counters
    def cpu_time_s(self) -> float:
        # clock_gettime(CLOCK_PROCESS_CPUTIME_ID): ns resolution. os.times() ticks
        # at 1/CLK_TCK (10 ms), too coarse for a 1 % budget over 1 s windows.
        return time.process_time()

    def counters(self) -> Mapping[str, int]:
        return procfs.vmstat_counters(self._root)

    def close(self) -> None:
        self._close_rings()
        self._channel.close()
