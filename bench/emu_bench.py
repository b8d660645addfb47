"""Emulator throughput: simulated accesses per second on one core.

Runs the default scenario's workload mix (one VM per workload, no policy) for a
fixed amount of virtual time and divides the accesses executed by the wall time;
then the same for trace replay (``emu.trace_accesses_per_s``): one VM replaying
a trace of 4 M misses over 64 Ki pages, pages allocated at first touch.
"""

from __future__ import annotations

import time

import numpy as np

from bench import emit
from emu.machine import World
from emu.machine.params import Params
from emu.workloads import WORKLOADS, make_workload
from emu.workloads.trace import Trace, TraceWorkload

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
    emit("emu.trace_accesses_per_s", trace_accesses_per_s(), "accesses/s")


def trace_accesses_per_s() -> float:
    """Accesses per wall second of a World replaying a trace (target >= 20 M)."""
    rng = np.random.default_rng(1)
    npages = 65_536
    # skewed page popularity (density ~ x^-3/4), first touches spread through the trace
    acc = (npages * rng.random(4_000_000) ** 4).astype(np.uint32)
    acc[rng.choice(len(acc), npages, replace=False)] = rng.permutation(npages)
    _, first = np.unique(acc, return_index=True)
    remap = np.empty(npages, np.uint32)
    remap[acc[np.sort(first)]] = np.arange(npages, dtype=np.uint32)
    trace = Trace(
        np.arange(npages, dtype=np.uint64),
        remap[acc],
        rng.random(len(acc)) < 0.2,
        np.array([len(acc) // 2], np.int64),
    )
    world = World(1024 * MIB, 4096 * MIB, params=Params(), seed=1)
    world.add_vm("vm", 2, npages * 4096 // 4, npages * 4096)
    wl = TraceWorkload(trace)
    world.spawn("vm", wl, 10**12, prefault=wl.prefault)
    world.clock.advance(0.02)
    vm = world.vm("vm")
    before = vm.counters.accesses
    t0 = time.perf_counter()
    world.clock.advance(1.0)
    wall = time.perf_counter() - t0
    return (vm.counters.accesses - before) / wall


if __name__ == "__main__":
    main()
