"""Run a daemon in the foreground under systemd, with its control socket and signals.

The same sequence for both agents: start the signal thread, the control socket
and any extra server (metrics), report ``READY=1`` with the daemon's summary,
run the loop (which sends ``WATCHDOG=1`` between ticks: hypertier_common.systemd),
report ``STOPPING=1``, then close the servers. What the loop changes in the
system stays; each daemon's own ``run`` says what it releases on the way out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from hypertier_common.cli import Signals
from hypertier_common.control import ControlServer
from hypertier_common.systemd import Notifier

__all__ = ["Server", "Service", "serve"]


class Service(Protocol):
    """A daemon loop: ``run`` until ``stop`` is called (from any thread)."""

    def run(
        self, heartbeat: Callable[[], object] | None, heartbeat_every_s: float
    ) -> None: ...

    def stop(self) -> None: ...

    def summary(self) -> str: ...


class Server(Protocol):
    """Another server the daemon runs while it serves (the metrics endpoint)."""

    def start(self) -> None: ...

    def close(self) -> None: ...


def serve(
    service: Service,
    server: ControlServer,
    reload: Callable[[], None],
    signals: Signals | None = None,
    on_ready: Callable[[], None] | None = None,
    extra: Sequence[Server] = (),
) -> None:
    """Serve ``server`` (and ``extra``) and run ``service`` until it is stopped.

    ``reload`` re-reads the configuration on SIGHUP (the ``reload`` request
    calls it through the controller); ``on_ready`` runs once the sockets are up.
    """
    notifier = Notifier()
    (signals or Signals()).start(service.stop, reload)
    server.start()
    for other in extra:
        other.start()
    try:
        if on_ready is not None:
            on_ready()
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
