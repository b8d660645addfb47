"""A fake clock for the emulator and tests: virtual time that advances instantly.

It satisfies both agents' ``Clock`` protocols (``monotonic()`` and
``wait(event, timeout_s)``). Listeners registered with :meth:`on_advance` run on
every advance, which is how a :class:`emu.machine.World` executes its workloads
while a daemon waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["FakeClock"]


class FakeClock:
    """Virtual monotonic time in seconds, starting at ``start_s``."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s
        self._listeners: list[Callable[[float], None]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    def on_advance(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(dt_s)`` each time the clock moves forward."""
        self._listeners.append(listener)

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"cannot move time backwards by {dt_s} s")
        if dt_s == 0:
            return
        self._now += dt_s
        for listener in self._listeners:
            listener(dt_s)

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Like ``event.wait(timeout_s)``, advancing virtual time, not sleeping."""
        if event.is_set():
            return True
        self.advance(max(0.0, timeout_s))
        return event.is_set()
