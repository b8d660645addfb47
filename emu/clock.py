"""A fake clock for the emulator and tests: virtual time that never sleeps.

It satisfies both agents' ``Clock`` protocols (``monotonic()`` and
``wait(event, timeout_s)``). Listeners registered with :meth:`on_advance` run on
every advance, which is how a :class:`emu.machine.World` executes its workloads
while a daemon waits.

By default a ``wait`` advances time itself, so a daemon loop runs through
virtual time as fast as it can compute. With ``advance_on_wait=False`` time
moves only when someone calls :meth:`advance`: a daemon looping in another
thread then blocks in ``wait`` until the test advances the clock past its
deadline or sets the event, so a test decides exactly when each tick happens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["FakeClock"]

# How often a blocked wait re-checks its event (threading.Event cannot notify
# the clock's condition); time itself moves only through advance().
_EVENT_POLL_S = 0.005


class FakeClock:
    """Virtual monotonic time in seconds, starting at ``start_s``."""

    def __init__(self, start_s: float = 0.0, *, advance_on_wait: bool = True) -> None:
        self._now = start_s
        self._advance_on_wait = advance_on_wait
        self._listeners: list[Callable[[float], None]] = []
        self._moved = threading.Condition()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    def on_advance(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(dt_s)`` each time the clock moves forward."""
        self._listeners.append(listener)

    def advance(self, dt_s: float) -> None:
        """Move time forward by ``dt_s``; listeners run before any waiter wakes."""
        if dt_s < 0:
            raise ValueError(f"cannot move time backwards by {dt_s} s")
        if dt_s == 0:
            return
        with self._moved:
            self._now += dt_s
            for listener in self._listeners:
                listener(dt_s)
            self._moved.notify_all()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Like ``event.wait(timeout_s)`` in virtual time; True if ``event`` is set.

        Advances the clock by ``timeout_s`` itself, or (``advance_on_wait=False``)
        blocks until another thread advances it that far or sets ``event``.
        """
        if event.is_set():
            return True
        if self._advance_on_wait:
            self.advance(max(0.0, timeout_s))
            return event.is_set()
        with self._moved:
            deadline = self._now + max(0.0, timeout_s)
            while self._now < deadline and not event.is_set():
                self._moved.wait(_EVENT_POLL_S)
        return event.is_set()
