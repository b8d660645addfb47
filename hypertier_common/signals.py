"""What the daemon command's signal handlers ask for: TERM/INT stop, HUP reload.

Handlers only set events (signal(7): little is safe inside one); a thread of
:class:`Signals` acts on them. Installed by hypertier_common.cli for the
command marked ``DAEMON``, so tests drive the daemons without signals.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hypertier_common.errors import AgentError

__all__ = ["Signals"]

log = logging.getLogger(__name__)


@dataclass
class Signals:
    """What the daemon command's signal handlers ask for: TERM/INT stop, HUP reload.

    The handlers only set events; :meth:`start` runs a thread that acts on them
    outside the signal handler.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def request_reload(self) -> None:
        self.reload.set()
        self.wake.set()

    def install(self) -> Callable[[], None]:
        """Route SIGTERM/SIGINT/SIGHUP here (only possible on the main thread);
        returns what puts the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        wanted = {
            signal.SIGTERM: lambda *_: self.request_stop(),
            signal.SIGINT: lambda *_: self.request_stop(),
            signal.SIGHUP: lambda *_: self.request_reload(),
        }
        previous = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def start(
        self, on_stop: Callable[[], None], on_reload: Callable[[], None]
    ) -> threading.Thread:
        """Call ``on_reload`` per HUP (its AgentError is logged), ``on_stop`` once."""

        def act() -> None:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self.reload.is_set():
                    self.reload.clear()
                    try:
                        on_reload()
                    except AgentError as err:
                        log.error(
                            "reload failed, keeping the old configuration: %s", err
                        )
                if self.stop.is_set():
                    on_stop()
                    return

        thread = threading.Thread(target=act, name="signals", daemon=True)
        thread.start()
        return thread
