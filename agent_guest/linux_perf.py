"""perf events for sampling: PMUs and tracepoints from sysfs/tracefs, the
``perf_event_attr`` of each sample source, and the mmap'd ring of each event.

Man page: perf_event_open(2); PMU event specs: /sys/bus/event_source/devices
(Documentation/ABI/testing/sysfs-bus-event_source-devices-events).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent_guest import perf_abi as abi
from agent_guest.backend import PAGE_SIZE, SamplerSettings, SampleSource
from agent_guest.linux_syscalls import Syscalls
from hypertier_common.arrays import U8
from hypertier_common.errors import AccessDenied, BackendError, Unsupported

__all__ = ["EventSpec", "PerfEvents", "Ring"]

_EVENT_SOURCES = "sys/bus/event_source/devices"
_PAGE_FAULT_USER = "events/exceptions/page_fault_user"


@dataclass(frozen=True)
class EventSpec:
    """One event to open per CPU: its attr, sample_type and raw address offset."""

    attr: bytes
    sample_type: int
    raw_addr_offset: int = -1


@dataclass
class Ring:
    """One perf event fd with its mmap'd ring."""

    fd: int
    mm: mmap.mmap
    data: U8
    sample_type: int
    raw_addr_offset: int = -1

    def drain(self) -> U8:
        (head,) = struct.unpack_from("<Q", self.mm, abi.MMAP_DATA_HEAD)
        (tail,) = struct.unpack_from("<Q", self.mm, abi.MMAP_DATA_TAIL)
        # data_head is read before the data (x86-TSO keeps load order; other
        # architectures would need smp_rmb here, which CPython cannot issue).
        out = abi.ring_slice(self.data, tail, head)
        # Only after copying do we hand the bytes back to the kernel.
        struct.pack_into("<Q", self.mm, abi.MMAP_DATA_TAIL, head)
        return out

    def enable(self) -> None:
        fcntl.ioctl(self.fd, abi.IOC_ENABLE, 0)

    def disable(self) -> None:
        fcntl.ioctl(self.fd, abi.IOC_DISABLE, 0)

    def close(self) -> None:
        del self.data
        self.mm.close()
        os.close(self.fd)


class PerfEvents:
    """The perf events of one machine: ``root`` prefixes sysfs, ``tracefs`` is
    the tracefs mount; ``fault_event`` is how page faults are counted
    (``software`` or ``tracepoint``, see LinuxGuestBackend)."""

    def __init__(
        self, root: Path, tracefs: Path, fault_event: str, syscalls: Syscalls
    ) -> None:
        self.devices = root / _EVENT_SOURCES
        self.tracefs = tracefs
        self._fault_event = fault_event
        self._sys = syscalls

    def pmus(self) -> set[str]:
        """The names of the PMUs sysfs lists (empty without the directory)."""
        devs = self.devices
        return {d.name for d in devs.iterdir()} if devs.is_dir() else set()

    def pebs_pmu(self, present: set[str]) -> str | None:
        """The core PMU with a mem-loads event, if any."""
        for name in ("cpu", "cpu_core"):  # cpu_core: hybrid Alder Lake and later
            if name in present and (self.devices / name / "events/mem-loads").exists():
                return name
        return None

    def probe_software(self) -> str | None:
        """Why a software page-fault event cannot be opened, or None if it can."""
        attr = abi.encode_attr(
            type_=abi.TYPE_SOFTWARE,
            config=abi.SW_PAGE_FAULTS,
            sample_period=1000,
            sample_type=abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_ADDR,
        )
        try:
            fd = self._sys.perf_event_open(attr, -1, 0)
        except (Unsupported, AccessDenied) as err:
            return str(err)
        os.close(fd)
        return None

    def tracepoint_id(self) -> int | None:
        """The id of exceptions:page_fault_user, or None if tracefs lacks it."""
        try:
            return int((self.tracefs / _PAGE_FAULT_USER / "id").read_text())
        except (OSError, ValueError):
            return None

    def _tracepoint_addr_offset(self) -> int:
        fmt = (self.tracefs / _PAGE_FAULT_USER / "format").read_text()
        m = re.search(r"field:unsigned long address;\s*offset:(\d+);", fmt)
        if m is None:
            raise Unsupported(
                "page_fault_user tracepoint", "no address field in format"
            )
        return int(m.group(1))

    def event_specs(
        self, s: SamplerSettings, no_tracepoint: str = "tracefs missing"
    ) -> list[EventSpec]:
        """The events to open on each CPU for ``s.source`` (two for PEBS: loads
        and stores); ``no_tracepoint`` is the reason given when the page-fault
        tracepoint is wanted but missing."""
        basic = abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_ADDR
        if s.source is SampleSource.PEBS:
            pmu = self.pebs_pmu(self.pmus())
            assert pmu is not None
            devs = self.devices
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
                out.append(EventSpec(attr, st))
            return out
        if s.source is SampleSource.IBS:
            ptype = int((self.devices / "ibs_op" / "type").read_text())
            # ADDR for IBS op samples: Linux 6.1 (perf/x86/amd: "Add support for
            # PERF_SAMPLE_ADDR"); IBS periods are multiples of 16.
            period = max(0x10, s.period // 16 * 16)
            attr = abi.encode_attr(
                type_=ptype, config=0, sample_period=period, sample_type=basic
            )
            return [EventSpec(attr, basic)]
        if s.source is SampleSource.PAGE_FAULT:
            if self._fault_event == "tracepoint":
                tid = self.tracepoint_id()
                if tid is None:
                    raise Unsupported("page_fault_user tracepoint", no_tracepoint)
                st = abi.SAMPLE_TID | abi.SAMPLE_TIME | abi.SAMPLE_RAW
                attr = abi.encode_attr(
                    type_=abi.TYPE_TRACEPOINT,
                    config=tid,
                    sample_period=s.period,
                    sample_type=st,
                    exclude_kernel=False,
                )
                return [EventSpec(attr, st, self._tracepoint_addr_offset())]
            attr = abi.encode_attr(
                type_=abi.TYPE_SOFTWARE,
                config=abi.SW_PAGE_FAULTS,
                sample_period=s.period,
                sample_type=basic,
            )
            return [EventSpec(attr, basic)]
        raise Unsupported(f"perf events for {s.source.value}", "not a perf source")

    def open_rings(
        self, specs: Sequence[EventSpec], cpus: Sequence[int], ring_pages: int
    ) -> list[Ring]:
        """Each event of ``specs`` opened (pid=-1) and enabled on every CPU of
        ``cpus``; on any failure the rings already open are closed."""
        rings: list[Ring] = []
        try:
            for spec in specs:
                for cpu in cpus:
                    rings.append(self._open_ring(spec, cpu, ring_pages))
        except BaseException:
            for ring in rings:
                ring.close()
            raise
        return rings

    def _open_ring(self, spec: EventSpec, cpu: int, ring_pages: int) -> Ring:
        fd = self._sys.perf_event_open(spec.attr, -1, cpu)
        try:
            mm = mmap.mmap(fd, (1 + ring_pages) * PAGE_SIZE)
        except OSError as err:
            os.close(fd)
            raise BackendError(f"mmap of perf ring on cpu {cpu}: {err}") from err
        data = np.frombuffer(mm, np.uint8, ring_pages * PAGE_SIZE, PAGE_SIZE)
        ring = Ring(fd, mm, data, spec.sample_type, spec.raw_addr_offset)
        ring.enable()
        return ring
