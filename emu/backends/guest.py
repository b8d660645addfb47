"""The emulated guest backend: agent_guest's GuestBackend over an emu World.

A view of one VM of the world: its two guest NUMA nodes (sizes follow host
resizes), its processes, the sample sources the emulated CPU offers, move_pages
with per-page errno statuses, and its end of the host-guest channel.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

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
from agent_guest.errors import NoSuchProcess
from emu.machine import FAST, SLOW, EmuProcess, NoSuchProcessError, World
from hypertier_common.errors import BackendError, Unsupported

__all__ = ["EmuGuestBackend"]

_PMU_CAPS = {
    "pebs": frozenset({Capability.PEBS}),
    "ibs": frozenset({Capability.IBS}),
    "none": frozenset(),
}


class EmuGuestBackend:
    """The guest of VM ``vm`` in ``world``.

    ``pmu`` picks what the emulated vCPU offers: "pebs" (Intel), "ibs" (AMD) or
    "none" (no PMU: only the page-fault and A-bit fallbacks, as on nested KVM).
    """

    def __init__(self, world: World, vm: str, pmu: str = "pebs") -> None:
        if pmu not in _PMU_CAPS:
            raise ValueError(f"pmu {pmu!r} unknown; choose from {sorted(_PMU_CAPS)}")
        self._world = world
        self._vm = world.vm(vm)
        self._name = vm
        self._caps = _PMU_CAPS[pmu] | {
            Capability.PAGE_FAULT_SAMPLING,
            Capability.SOFT_DIRTY_SCAN,
            Capability.MOVE_PAGES,
            Capability.HOST_CHANNEL,
        }
        self._source: SampleSource | None = None
        self._last_drain_s = world.clock.monotonic()
        self._own_moved = 0  # pages this backend's move_pages moved

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(self._caps)

    def keep_own_memory(self, node: int) -> int:
        """The emulator does not model the agent's own memory: nothing moves."""
        if node not in (FAST, SLOW):
            raise BackendError(f"node {node} does not exist")
        return 0

    def numa_nodes(self) -> Sequence[NumaNode]:
        vm = self._vm
        out = []
        for node in (0, 1):
            total = vm.plugged[node]
            free = total - vm.used_pages(node)
            kept = min(free, self._world.node_reserve_pages(vm, node))
            out.append(
                NumaNode(
                    node=node,
                    tier=Tier.FAST if node == FAST else Tier.SLOW,
                    total_bytes=total * PAGE_SIZE,
                    free_bytes=free * PAGE_SIZE,
                    has_cpus=node == FAST,
                    reserved_bytes=kept * PAGE_SIZE,
                )
            )
        return out

    def processes(self) -> Sequence[ProcessInfo]:
        return [
            ProcessInfo(
                pid=p.pid,
                comm=p.comm,
                rss_bytes=int(np.count_nonzero(p.pt >= 0)) * PAGE_SIZE,
                cmdline=p.comm,
                cgroup=f"/machine/{self._name}/{p.comm}",
            )
            for p in self._vm.procs.values()
            if p.alive
        ]

    def vmas(self, pid: int) -> Sequence[Vma]:
        p = self._proc(pid)
        return [Vma(p.base_addr, p.base_addr + p.npages * PAGE_SIZE, "rw-p", "")]

    def start_sampling(self, pids: Sequence[int], settings: SamplerSettings) -> None:
        cap = SOURCE_CAPABILITY[settings.source]
        if cap not in self._caps:
            raise Unsupported(
                f"sample source {settings.source.value}",
                f"the emulated vCPU offers {sorted(c.value for c in self._caps)}",
            )
        self._world.start_sampling(
            self._name,
            settings.source.value,
            pids,
            period=settings.period,
            ring_pages=settings.ring_pages,
            ldlat_cycles=settings.ldlat_cycles
            if settings.source is SampleSource.PEBS
            else 0,
        )
        self._source = settings.source
        self._last_drain_s = self._world.clock.monotonic()

    def read_samples(self) -> AccessSamples:
        if self._source is None:
            raise Unsupported("read_samples", "sampling was not started")
        now = self._world.clock.monotonic()
        pid, addr, weight, lost = self._world.drain_samples(
            self._name, now - self._last_drain_s
        )
        self._last_drain_s = now
        t = np.full(len(addr), int(now * 1e9), np.uint64)
        return AccessSamples(self._source, pid, addr, t, weight, lost=lost)

    def stop_sampling(self) -> None:
        self._world.stop_sampling(self._name)
        self._source = None

    def page_nodes(
        self, pid: int, addrs: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.int32]:
        try:
            return self._world.page_nodes(self._name, pid, addrs)
        except NoSuchProcessError as err:
            raise NoSuchProcess(pid) from err

    def move_pages(
        self, pid: int, addrs: npt.NDArray[np.uint64], node: int
    ) -> MoveResult:
        if node not in (0, 1):
            status = np.full(len(addrs), -errno.ENODEV, np.int32)
            return MoveResult(len(addrs), 0, status, {errno.ENODEV: len(addrs)})
        try:
            before = self._world.page_nodes(self._name, pid, addrs)
            status = self._world.move_pages(self._name, pid, addrs, node)
        except NoSuchProcessError as err:
            raise NoSuchProcess(pid) from err
        moved = int(np.count_nonzero((status == node) & (before != node)))
        self._own_moved += moved
        neg = -status[status < 0]
        codes, counts = np.unique(neg, return_counts=True)
        failures = {int(c): int(n) for c, n in zip(codes, counts, strict=True)}
        return MoveResult(len(addrs), moved, status, failures)

    def channel_send(self, line: bytes) -> None:
        self._vm.to_host += line

    def channel_recv(self) -> bytes:
        data = bytes(self._vm.to_guest)
        self._vm.to_guest.clear()
        return data

    def cpu_time_s(self) -> float:
        return self._vm.counters.guest_mgmt_ns * 1e-9

    def counters(self) -> Mapping[str, int]:
        c = self._vm.counters
        return {
            "nr_tlb_local_flush_one": c.tlb_local_flush_one,
            "nr_tlb_local_flush_all": c.tlb_local_flush_all,
            "nr_tlb_remote_flush": c.tlb_remote_flush,
            # Pages that changed node without this backend's move_pages: what
            # /proc/vmstat shows of the kernel's own migrations (NUMA
            # balancing, demotion) and an unplug's.
            "numa_pages_migrated": c.guest_pages_moved
            + c.unplug_pages_moved
            - self._own_moved,
        }

    def close(self) -> None:
        if self._source is not None and self._name in self._world.vms:
            self.stop_sampling()

    def _proc(self, pid: int) -> EmuProcess:
        try:
            return self._world.process(self._name, pid)
        except NoSuchProcessError as err:
            raise NoSuchProcess(pid) from err
