"""The clock the daemons run on: real time (:class:`SystemClock`) or virtual time.

Injected into both agents' daemons; ``emu.clock.FakeClock`` satisfies
:class:`Clock` too, so tests advance time instantly and never sleep.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Monotonic seconds and an interruptible wait."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set or ``timeout_s`` passes; True if it was set."""
        ...


class SystemClock:
    """Real time: ``time.monotonic`` and ``Event.wait``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))
