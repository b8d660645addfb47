"""Host daemon tick time with 10, 100 and 1000 emulated VMs (``host.tick_ms.<n>vms``).

Each VM's guest reports every 5 s (agent_guest's default ``report_interval_s``),
staggered, with usage, a hot set and a pressure that shift over time so the
policy keeps resizing; the host ticks every second. The figure is the median
wall time of ``Daemon.tick()`` (events, discovery, channel parsing, policy,
resizes through the emulated backend) over 30 ticks after 20 warm-up ticks
(the first allotment changes from the initial sizes, and the emulator
allocating its frame arrays). Also printed:
``host.tick_cpu_ms.<n>vms``, the CPU time of the ticking thread
(``time.thread_time``): equal to wall time on an idle machine for this I/O-free
tick, and not inflated by other tenants of a shared CI box. Target: <= 10 ms at
1000 VMs.
"""

from __future__ import annotations

import math
import statistics
import time

import hypertier_wire as wire
from agent_host.config import loads
from agent_host.daemon import Daemon
from bench import emit
from emu.clock import FakeClock
from emu.host import EmuHostBackend
from emu.world import PAGE_SIZE, World

MiB = 1 << 20
CONFIG = """
[host]
backend = "emu"
[policy]
interval_s = 1.0
host_reserved_bytes = 0
safety_margin_bytes = 2097152
hysteresis_bytes = 4194304
"""
WARMUP_TICKS = 30
REPORT_EVERY_TICKS = 5
TICKS = 30


def _reports(world: World, seq: int) -> None:
    for i, vm in enumerate(world.vms.values()):
        if (i + seq) % REPORT_EVERY_TICKS:
            continue
        nodes = tuple(
            wire.NodeUsage(
                n, t, vm.plugged[n] * PAGE_SIZE, vm.plugged[n] * PAGE_SIZE * 3 // 4
            )
            for n, t in ((0, "fast"), (1, "slow"))
        )
        used = sum(x.used_bytes for x in nodes)
        phase = math.sin(seq / 3.0 + i)
        hot = int(used * (0.5 + 0.4 * phase))  # within what it uses: honest
        vm.to_host += wire.encode(wire.Report(seq, nodes, hot, max(0.0, phase)))


def tick_ms(vms: int) -> tuple[float, float]:
    """Median wall and thread-CPU milliseconds of one tick over ``vms`` VMs."""
    clock = FakeClock()
    world = World(
        host_fast_bytes=vms * 16 * MiB, host_slow_bytes=vms * 64 * MiB, clock=clock
    )
    for i in range(vms):
        world.add_vm(f"vm{i}", 1, 8 * MiB, 8 * MiB, 32 * MiB, 32 * MiB)
    daemon = Daemon(loads(CONFIG), EmuHostBackend(world), clock)
    wall: list[float] = []
    cpu: list[float] = []
    for seq in range(1, WARMUP_TICKS + TICKS + 1):
        _reports(world, seq)
        clock.advance(1.0)
        t0, c0 = time.perf_counter(), time.thread_time()
        daemon.tick()
        if seq > WARMUP_TICKS:
            wall.append((time.perf_counter() - t0) * 1000.0)
            cpu.append((time.thread_time() - c0) * 1000.0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    for vms in (10, 100, 1000):
        wall, cpu = tick_ms(vms)
        emit(f"host.tick_ms.{vms}vms", wall, "ms")
        emit(f"host.tick_cpu_ms.{vms}vms", cpu, "ms")


if __name__ == "__main__":
    main()
