"""Host daemon tick time with 10, 100 and 1000 emulated VMs (``host.tick_ms.<n>vms``),
and with 100 VMs flooding their channels (``host.flood_tick_ms.100vms``).

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

``host.flood_tick_ms.100vms``: 100 VMs each send their whole per-tick byte
budget (``channel.max_bytes_per_tick``, 16 KiB) every tick: half blank lines,
half junk (short garbage, truncated and invalid JSON), none of it valid. The
host is set never to throttle them (``channel.max_invalid`` huge), so every
tick splits and counts all 1.6 MiB instead of discarding it unread: the worst
case, not the usual one. Median wall time of ``Daemon.tick()`` over 30 ticks
after 5 warm-up ticks. Target: <= 20 ms.
"""

from __future__ import annotations

import math
import statistics
import time

import hypertier_wire as wire
from agent_host.config import loads
from agent_host.daemon import Daemon
from bench import emit
from emu.backends.host import EmuHostBackend
from emu.clock import FakeClock
from emu.machine import PAGE_SIZE, World

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
FLOOD_CONFIG = CONFIG + "[channel]\nmax_invalid = 1000000000\n"
FLOOD_WARMUP_TICKS = 5


def _flood_bytes(budget: int) -> bytes:
    """``budget`` bytes: half blank lines, half junk lines, none valid."""
    junk = (
        b"x\n",
        b"not json at all\n",
        b'{"v":1,"type":"report","seq":\n',
        b'{"v":2,"type":"hello","agent":"a","version":"b"}\n',
        b"\x00\xff\xfe garbage \x80\n",
    )
    half = budget // 2
    out = bytearray()
    i = 0
    while len(out) < half:
        out += junk[i % len(junk)]
        i += 1
    out += b"\n" * (budget - len(out))
    return bytes(out[:budget])


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


def flood_tick_ms(vms: int) -> float:
    """Median wall milliseconds of one tick with every VM flooding its channel."""
    clock = FakeClock()
    world = World(
        host_fast_bytes=vms * 16 * MiB, host_slow_bytes=vms * 64 * MiB, clock=clock
    )
    for i in range(vms):
        world.add_vm(f"vm{i}", 1, 8 * MiB, 8 * MiB, 32 * MiB, 32 * MiB)
    cfg = loads(FLOOD_CONFIG)
    flood = _flood_bytes(cfg.channel.max_bytes_per_tick)
    daemon = Daemon(cfg, EmuHostBackend(world), clock)
    wall: list[float] = []
    for tick in range(FLOOD_WARMUP_TICKS + TICKS):
        for vm in world.vms.values():
            vm.to_host += flood
        clock.advance(1.0)
        t0 = time.perf_counter()
        daemon.tick()
        if tick >= FLOOD_WARMUP_TICKS:
            wall.append((time.perf_counter() - t0) * 1000.0)
    guest = daemon.status()["vms"]["vm0"]["guest"]
    assert not guest["throttled"], "the flood bench must measure the parse path"
    return statistics.median(wall)


def main() -> None:
    for vms in (10, 100, 1000):
        wall, cpu = tick_ms(vms)
        emit(f"host.tick_ms.{vms}vms", wall, "ms")
        emit(f"host.tick_cpu_ms.{vms}vms", cpu, "ms")
    emit("host.flood_tick_ms.100vms", flood_tick_ms(100), "ms")


if __name__ == "__main__":
    main()
