"""Emulator throughput: simulated accesses per second on one core.

Runs the default scenario's workload mix (one VM per workload, no policy) for a
fixed amount of virtual time and divides the accesses executed by the wall time.
"""

from __future__ import annotations

import time

from bench import emit
from emu.params import Params
from emu.workloads import WORKLOADS, make_workload
from emu.world import World

MIB = 1 << 20


def main() -> None:
    npages = 98_304
    world = World(4096 * MIB, 16384 * MIB, params=Params(), seed=1)
    for i, name in enumerate(sorted(WORKLOADS)):
        world.add_vm(f"vm{i}", 2, npages * 4096 // 4, npages * 4096)
        world.spawn(f"vm{i}", make_workload(name, npages, seed=i), 10**12)
    world.clock.advance(0.02)  # warm up (first chunks, caches)
    before = sum(vm.counters.accesses for vm in world.vms.values())
    t0 = time.perf_counter()
    world.clock.advance(0.5)
    wall = time.perf_counter() - t0
    done = sum(vm.counters.accesses for vm in world.vms.values()) - before
    emit("emu.accesses_per_s", done / wall, "accesses/s")


if __name__ == "__main__":
    main()
