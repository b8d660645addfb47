"""Host daemon tick time with 10, 100 and 1000 emulated VMs (``host.tick_ms.<n>vms``).

Each VM's guest reports every 5 s (agent_guest's default ``report_interval_s``),
staggered, with usage, a hot set and a pressure that shift over time so the
policy keeps resizing; the host ticks every second. The figure is the median
wall time of ``Daemon.tick()`` (events, discovery, channel parsing, policy,
resizes through the emulated backend) over 20 ticks after 5 warm-up ticks.
Target: <= 10 ms at 1000 VMs.
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
WARMUP_TICKS = 5
REPORT_EVERY_TICKS = 5
TICKS = 20


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
        total = sum(x.total_bytes for x in nodes)
        phase = math.sin(seq / 3.0 + i)
        hot = int(total * (0.5 + 0.4 * phase))
        vm.to_host += wire.encode(wire.Report(seq, nodes, hot, max(0.0, phase)))


def tick_ms(vms: int) -> float:
    """Median milliseconds of one daemon tick over ``vms`` emulated VMs."""
    clock = FakeClock()
    world = World(
        host_fast_bytes=vms * 16 * MiB, host_slow_bytes=vms * 64 * MiB, clock=clock
    )
    for i in range(vms):
        world.add_vm(f"vm{i}", 1, 8 * MiB, 8 * MiB, 32 * MiB, 32 * MiB)
    daemon = Daemon(loads(CONFIG), EmuHostBackend(world), clock)
    samples: list[float] = []
    for seq in range(1, WARMUP_TICKS + TICKS + 1):
        _reports(world, seq)
        clock.advance(1.0)
        t0 = time.perf_counter()
        daemon.tick()
        if seq > WARMUP_TICKS:
            samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def main() -> None:
    for vms in (10, 100, 1000):
        emit(f"host.tick_ms.{vms}vms", tick_ms(vms), "ms")


if __name__ == "__main__":
    main()
