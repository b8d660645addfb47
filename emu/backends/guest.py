"""The emulated guest backend: agent_guest's GuestBackend over an emu World.

A view of one VM of the world: its two guest NUMA nodes (sizes follow host
resizes), its processes, the sample sources the emulated CPU offers, move_pages
with per-page errno statuses, and its end of the host-guest channel.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence

import numpy as np

from agent_guest import backend as api
from agent_guest.errors import NoSuchProcess
from emu.machine import FAST, SLOW, EmuProcess, NoSuchProcessError, World
from hypertier_common.arrays import I32, U64
from hypertier_common.errors import BackendError, Unsupported

__all__ = ["EmuGuestBackend"]

_PMU_CAPS = {
    "pebs": frozenset({api.Capability.PEBS}),
    "ibs": frozenset({api.Capability.IBS}),
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
            api.Capability.PAGE_FAULT_SAMPLING,
            api.Capability.SOFT_DIRTY_SCAN,
            api.Capability.MOVE_PAGES,
            api.Capability.HOST_CHANNEL,
        }
        self._source: api.SampleSource | None = None
        self._last_drain_s = world.clock.monotonic()
        self._own_moved = 0  # pages this backend's move_pages moved

    def capabilities(self) -> frozenset[api.Capability]:
        return frozenset(self._caps)

    def keep_own_memory(self, node: int) -> int:
        """The emulator does not model the agent's own memory: nothing moves."""
        if node not in (FAST, SLOW):
            raise BackendError(f"node {node} does not exist")
        return 0

    def numa_nodes(self) -> Sequence[api.NumaNode]:
        vm = self._vm
        out = []
        for node in (0, 1):
            total = vm.plugged[node]
            free = total - vm.used_pages(node)
            kept = min(free, self._world.node_reserve_pages(vm, node))
            out.append(
                api.NumaNode(
                    node=node,
                    tier=api.Tier.FAST if node == FAST else api.Tier.SLOW,
                    total_bytes=total * api.PAGE_SIZE,
                    free_bytes=free * api.PAGE_SIZE,
                    has_cpus=node == FAST,
                    reserved_bytes=kept * api.PAGE_SIZE,
                )
            )
        return out

    def processes(self) -> Sequence[api.ProcessInfo]:
        return [
            api.ProcessInfo(
                pid=p.pid,
                comm=p.comm,
                rss_bytes=int(np.count_nonzero(p.pt >= 0)) * api.PAGE_SIZE,
                cmdline=p.comm,
                cgroup=f"/machine/{self._name}/{p.comm}",
            )
            for p in self._vm.procs.values()
            if p.alive
        ]

    def vmas(self, pid: int) -> Sequence[api.Vma]:
        p = self._proc(pid)
        return [
            api.Vma(p.base_addr, p.base_addr + p.npages * api.PAGE_SIZE, "rw-p", "")
        ]

    def start_sampling(
        self, pids: Sequence[int], settings: api.SamplerSettings
    ) -> None:
        cap = api.SOURCE_CAPABILITY[settings.source]
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
            if settings.source is api.SampleSource.PEBS
            else 0,
        )
        self._source = settings.source
        self._last_drain_s = self._world.clock.monotonic()

    def read_samples(self) -> api.AccessSamples:
        if self._source is None:
            raise Unsupported("read_samples", "sampling was not started")
        now = self._world.clock.monotonic()
        pid, addr, weight, lost = self._world.drain_samples(
            self._name, now - self._last_drain_s
        )
        self._last_drain_s = now
        t = np.full(len(addr), int(now * 1e9), np.uint64)
        return api.AccessSamples(self._source, pid, addr, t, weight, lost=lost)

    def stop_sampling(self) -> None:
        self._world.stop_sampling(self._name)
        self._source = None

    def node_bytes(self, pid: int) -> Mapping[int, int]:
        try:
            return self._world.node_bytes(self._name, pid)
        except NoSuchProcessError as err:
            raise NoSuchProcess(pid) from err

    def page_nodes(self, pid: int, addrs: U64) -> I32:
        try:
            return self._world.page_nodes(self._name, pid, addrs)
        except NoSuchProcessError as err:
            raise NoSuchProcess(pid) from err

    def move_pages(self, pid: int, addrs: U64, node: int) -> api.MoveResult:
        if node not in (0, 1):
            status = np.full(len(addrs), -errno.ENODEV, np.int32)
            return api.MoveResult(len(addrs), 0, status, {errno.ENODEV: len(addrs)})
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
        return api.MoveResult(len(addrs), moved, status, failures)

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
