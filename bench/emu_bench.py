"""Emulator throughput: simulated accesses per second on one core.

Runs the default scenario's workload mix (one VM per workload, no policy) for a
fixed amount of virtual time and divides the accesses executed by the wall time;
then the same for trace replay (``emu.trace_accesses_per_s``): one VM replaying
a trace of 4 M misses over 64 Ki pages, pages allocated at first touch; and
recording's hot path (``emu.record_log_mb_per_s``, ``emu.record_accesses_per_s``):
a synthetic lackey log parsed, LLC-filtered and page-numbered in the recorder's
1 MiB blocks. It must keep up with valgrind: recording the awk word count of
docs/traces.md, lackey wrote ~21 MB/s of log per core of its own and the recorder
read it at ~41 MB/s per core of its own.
"""

from __future__ import annotations

import time

import numpy as np

from bench import emit
from emu.machine import World
from emu.machine.params import Params
from emu.workloads import WORKLOADS, make_workload
from emu.workloads.lackey import LackeyParser, miss_stream
from emu.workloads.trace import LlcFilter, PageNumbering, Trace, TraceWorkload

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
    mb_s, acc_s = record_rates()
    emit("emu.record_log_mb_per_s", mb_s, "MB/s")
    emit("emu.record_accesses_per_s", acc_s, "accesses/s")


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


def _lackey_log(lines: int, seed: int = 1) -> bytes:
    """A lackey log as valgrind 3.19 writes it: 2/3 instruction fetches, loads,
    stores and modifies over a skewed 64 MiB heap and a stack, a read(2) (whose
    buffer the kernel writes) every 20,000 lines."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(
        np.array([b"I ", b" L", b" S", b" M"]), lines, p=[0.66, 0.2, 0.1, 0.04]
    )
    heap = 0x4A000000 + (64 * MIB * rng.random(lines) ** 3).astype(np.int64) // 8 * 8
    stack = 0x1FFEFFF000 - rng.integers(0, 4096, lines) // 8 * 8
    addr = np.where(rng.random(lines) < 0.7, heap, stack)
    addr = np.where(kind == b"I ", 0x400000 + rng.integers(0, 1 << 20, lines), addr)
    out = [
        b"%s %010x,%d\n" % (k, a, 8 if k != b"I " else 4)
        for k, a in zip(kind.tolist(), addr.tolist(), strict=True)
    ]
    for i in range(0, lines, 20_000):
        out[i] = (
            b"SYSCALL[7,1](0) sys_read ( 3, 0x%x, 65536 ) --> [async] ...\n"
            b"SYSCALL[7,1](0) ... [async] --> Success(0x10000)\n" % (0x4A000000 + i)
        )
    return b"".join(out)


def record_rates(lines: int = 4_000_000) -> tuple[float, float]:
    """(MB of lackey log, data accesses) per wall second of the recorder's
    parse + LLC filter + page numbering, in its 1 MiB blocks."""
    log = _lackey_log(lines)
    parser = LackeyParser()
    blocks = (parser.feed(log[i : i + MIB]) for i in range(0, len(log), MIB))
    t0 = time.perf_counter()
    for _ in miss_stream(blocks, LlcFilter(8 * MIB, 16), PageNumbering()):
        pass
    wall = time.perf_counter() - t0
    return len(log) / 1e6 / wall, parser.accesses / wall


if __name__ == "__main__":
    main()
