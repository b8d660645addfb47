"""The guest agent's control API (:class:`Controller`).

``hypertier-guest status|reload|stop`` call it through the control socket
(hypertier_common.control: the transport, the same for both agents).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agent_guest.daemon import Daemon

__all__ = ["Controller"]


class Controller:
    """The daemon's control API; each method in ``METHODS`` is one remote call.

    ``reload`` re-reads the configuration through ``reload_config`` (given by
    ``cmd_run``, which knows the file) and swaps it in, or raises and keeps the
    old one.
    """

    METHODS = ("status", "reload", "stop")

    def __init__(self, daemon: Daemon, reload_config: Callable[[], None]) -> None:
        self._daemon = daemon
        self._reload = reload_config

    def status(self) -> Mapping[str, object]:
        """Counters of the running daemon (the keys of ``Daemon.status``)."""
        return self._daemon.status()

    def reload(self) -> Mapping[str, object]:
        """Re-read and apply the configuration. Raises ConfigError."""
        self._reload()
        return {"reloaded": True}

    def stop(self) -> Mapping[str, object]:
        """Finish the current tick and shut down."""
        self._daemon.stop()
        return {"stopping": True}
