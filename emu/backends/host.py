"""The emulated host backend: agent_host's HostBackend over an emu World.

Each VM has two allotments (virtio-mem devices on guest nodes 0 and 1) that
resize like virtio-mem: growing plugs at once, shrinking unplugs what the guest
can free and leaves ``current`` above the request when it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent_host import backend as api
from agent_host.errors import NoSuchDomain
from emu.machine import FAST, PAGE_SIZE, EmuVm, NoSuchVmError, World
from hypertier_common.errors import BackendError

__all__ = ["EmuHostBackend"]

_TIER_NODE = {api.Tier.FAST: 0, api.Tier.SLOW: 1}


class EmuHostBackend:
    """The host of ``world``: its two host nodes and every VM in it."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._event_cursor = len(world.events)
        self._channel_opens: dict[str, int] = {}
        self.closed = False

    def capabilities(self) -> frozenset[api.HostCapability]:
        return frozenset(
            {
                api.HostCapability.VIRTIO_MEM_RESIZE,
                api.HostCapability.KVM_STATS,
                api.HostCapability.GUEST_CHANNEL,
                api.HostCapability.METADATA,
                api.HostCapability.EVENTS,
            }
        )

    def host_nodes(self) -> Sequence[api.HostNode]:
        return [
            api.HostNode(
                node=n.node,
                tier=api.Tier.FAST if n.tier == FAST else api.Tier.SLOW,
                total_bytes=n.capacity_pages * PAGE_SIZE,
                free_bytes=max(0, n.capacity_pages - n.used_pages) * PAGE_SIZE,
                has_cpus=n.tier == FAST,
            )
            for n in self._world.host_nodes
        ]

    def domains(self) -> Sequence[api.DomainInfo]:
        return [self._info(vm) for vm in self._world.vms.values()]

    def _info(self, vm: EmuVm) -> api.DomainInfo:
        blk = self._world.params.block_bytes
        allots = tuple(
            api.Allotment(
                tier=tier,
                guest_node=node,
                requested_bytes=vm.requested[node] * PAGE_SIZE,
                current_bytes=vm.plugged[node] * PAGE_SIZE,
                max_bytes=vm.node_max[node] * PAGE_SIZE,
                block_bytes=blk,
                host_nodes=(vm.host_node[node],),
            )
            for tier, node in _TIER_NODE.items()
        )
        return api.DomainInfo(vm.name, vm.uuid, vm.vcpus, True, allots)

    def _vm(self, vm: str) -> EmuVm:
        try:
            return self._world.vm(vm)
        except NoSuchVmError as err:
            raise NoSuchDomain(vm) from err

    def resize(self, vm: str, tier: api.Tier, size_bytes: int) -> None:
        emu_vm = self._vm(vm)
        node = _TIER_NODE[tier]
        if size_bytes < 0 or size_bytes > emu_vm.node_max[node] * PAGE_SIZE:
            raise BackendError(
                f"{vm}: {tier.value} size {size_bytes} outside "
                f"[0, {emu_vm.node_max[node] * PAGE_SIZE}]"
            )
        self._world.resize(vm, node, size_bytes)

    def domain_stats(self, vm: str) -> api.DomainStats:
        c = self._vm(vm).counters
        return api.DomainStats(
            vm=vm,
            remote_tlb_flush=c.remote_tlb_flush,
            tlb_flush=c.tlb_flush,
            exits=c.vm_exits,
            cpu_time_s=self._vm(vm).vtime_s,
        )

    def get_metadata(self, vm: str) -> str | None:
        self._vm(vm)
        return self._world.metadata.get(vm)

    def set_metadata(self, vm: str, xml: str) -> None:
        self._vm(vm)
        self._world.metadata[vm] = xml
        self._world.oplog.append(("set_metadata", vm))

    def channel_send(self, vm: str, line: bytes) -> None:
        self._vm(vm).to_guest += line

    def channel_recv(self, vm: str) -> bytes:
        v = self._vm(vm)
        data = bytes(v.to_host)
        v.to_host.clear()
        return data

    def channel_connection(self, vm: str) -> int:
        self._vm(vm)
        return self._channel_opens.get(vm, 0)

    def reconnect_channel(self, vm: str) -> None:
        """Open a new connection to the channel, as the libvirt backend does
        after the socket broke (for tests)."""
        self._vm(vm)
        self._channel_opens[vm] = self._channel_opens.get(vm, 0) + 1

    def events(self) -> Sequence[api.DomainEvent]:
        new = self._world.events[self._event_cursor :]
        self._event_cursor = len(self._world.events)
        kinds = {"started": api.EventKind.STARTED, "stopped": api.EventKind.STOPPED}
        return [api.DomainEvent(vm, kinds[k]) for vm, k in new]

    def close(self) -> None:
        self.closed = True
