"""The clock the daemon runs on: real (``SystemClock``) or virtual (``emu.FakeClock``).

Injected into :class:`agent_host.daemon.Daemon` so tests advance time instantly.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait for ``event`` at most ``timeout_s`` seconds; True if it is set."""
        ...


class SystemClock:
    """Wall-clock time: ``time.monotonic`` and ``Event.wait``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(timeout_s)
