"""Run a daemon in the foreground under systemd, with its control socket and signals.

The same sequence for both agents: start the signal thread, the control socket
and any extra server (metrics), report ``READY=1`` with the daemon's summary,
run the loop (which sends ``WATCHDOG=1`` between ticks: hypertier_common.systemd),
report ``STOPPING=1``, then close the servers. What the loop changes in the
system stays; each daemon's own ``run`` says what it releases on the way out.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hypertier_common.clock import Clock
from hypertier_common.control import ControlServer
from hypertier_common.errors import AgentError
from hypertier_common.metrics import DurationHistogram
from hypertier_common.signals import Signals
from hypertier_common.systemd import Notifier, wait_beating

__all__ = ["Server", "Service", "TickStats", "once", "serve", "tick_loop"]

log = logging.getLogger(__name__)


class Service(Protocol):
    """A daemon loop: ``run`` until ``stop`` is called (from any thread)."""

    def run(
        self, heartbeat: Callable[[], object] | None, heartbeat_every_s: float
    ) -> None: ...

    def stop(self) -> None: ...

    def summary(self) -> str: ...


class Ticking(Protocol):
    """A daemon that ``run --once`` can drive."""

    def tick(self) -> None: ...

    def status(self) -> Mapping[str, Any]: ...


def once(daemon: Ticking, format_status: Callable[[Any], str]) -> int:
    """``run --once``: one tick, then the status as ``status`` prints it; 0."""
    daemon.tick()
    print(format_status(daemon.status()))
    return 0


class Server(Protocol):
    """Another server the daemon runs while it serves (the metrics endpoint)."""

    def start(self) -> None: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Service)


def serve(
    service: S,
    server: ControlServer,
    reload: Callable[[], None],
    signals: Signals | None = None,
    on_ready: Callable[[S], object] | None = None,
    extra: Sequence[Server] = (),
) -> None:
    """Serve ``server`` (and ``extra``) and run ``service`` until it is stopped.

    ``reload`` re-reads the configuration on SIGHUP (the ``reload`` request
    calls it through the controller); ``on_ready(service)`` runs once the
    sockets are up.
    """
    notifier = Notifier()
    (signals or Signals()).start(service.stop, reload)
    server.start()
    for other in extra:
        other.start()
    try:
        if on_ready is not None:
            on_ready(service)
        notifier.ready(service.summary())
        service.run(
            lambda: notifier.watchdog(service.summary()),
            notifier.watchdog_interval_s or math.inf,
        )
        notifier.stopping()
    finally:
        server.close()
        for other in extra:
            other.close()


@dataclass
class TickStats:
    """What a daemon's loop counts of itself, for ``status`` and the metrics:
    ticks done (:meth:`done`) and failed (:meth:`failed`, ``on_failure`` of
    :func:`tick_loop`), the last one's duration and the histogram of them."""

    ticks: int = 0
    failures: int = 0
    last_ms: float = 0.0
    durations: DurationHistogram = field(default_factory=DurationHistogram)

    def done(self, seconds: float) -> None:
        """One tick finished, after ``seconds``."""
        self.ticks += 1
        self.last_ms = seconds * 1e3
        self.durations.observe(seconds)

    def failed(self, err: AgentError) -> None:
        self.failures += 1


def tick_loop(
    tick: Callable[[], None],
    interval_s: Callable[[], float],
    clock: Clock,
    stop: threading.Event,
    heartbeat: Callable[[], object] | None = None,
    heartbeat_every_s: float = math.inf,
    on_failure: Callable[[AgentError], None] | None = None,
) -> None:
    """Call ``tick`` every ``interval_s()`` seconds of ``clock`` until ``stop``.

    Deadlines advance by the interval (read each round: a reload may change
    it), so ticks do not drift. A tick's AgentError is logged, handed to
    ``on_failure`` and the loop goes on; anything else is a bug and ends it.
    ``heartbeat`` (the systemd watchdog) is called after every tick and at
    least every ``heartbeat_every_s`` while the loop waits, so it stops being
    called when a tick hangs.
    """
    deadline = clock.monotonic()
    while not stop.is_set():
        try:
            tick()
        except AgentError as err:
            log.warning("tick failed, continuing: %s", err)
            if on_failure is not None:
                on_failure(err)
        deadline += interval_s()
        wait_beating(clock, stop, deadline, heartbeat, heartbeat_every_s)
