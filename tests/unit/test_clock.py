"""emu.clock.FakeClock: virtual time, advanced by waits or only by the test."""

from __future__ import annotations

import threading

from emu.clock import FakeClock


def _waiter(
    clock: FakeClock, event: threading.Event, timeout_s: float
) -> tuple[threading.Thread, list[bool]]:
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(clock.wait(event, timeout_s)))
    thread.start()
    return thread, got


def test_wait_advances_virtual_time_by_default() -> None:
    clock = FakeClock(10.0)
    moved: list[float] = []
    clock.on_advance(moved.append)
    assert clock.wait(threading.Event(), 2.5) is False
    assert clock.monotonic() == 12.5
    assert moved == [2.5]


def test_blocking_wait_returns_when_the_test_advances_past_its_deadline() -> None:
    clock = FakeClock(advance_on_wait=False)
    thread, got = _waiter(clock, threading.Event(), 1.0)
    clock.advance(0.5)
    thread.join(0.05)
    assert thread.is_alive()  # half way: still waiting
    clock.advance(0.5)
    thread.join(10.0)
    assert got == [False]
    assert clock.monotonic() == 1.0  # the wait itself moved no time


def test_blocking_wait_returns_when_the_event_is_set() -> None:
    clock = FakeClock(advance_on_wait=False)
    stop = threading.Event()
    thread, got = _waiter(clock, stop, 3600.0)
    stop.set()
    thread.join(10.0)
    assert got == [True]
    assert clock.monotonic() == 0.0
