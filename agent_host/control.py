"""The host agent's control API (:class:`Controller`).

``hypertier-host status|reload|stop|vm set`` call it through the control
socket (hypertier_common.control: the transport, the same for both agents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_host.backend import Tier
from agent_host.daemon import Daemon
from hypertier_common.control import BaseController
from hypertier_common.errors import ConfigError

__all__ = ["Controller"]


class Controller(BaseController):
    """The host's control API: the common ``status``, ``reload`` and ``stop``,
    and ``vm_set``."""

    METHODS = (*BaseController.METHODS, "vm_set")

    def __init__(self, daemon: Daemon, reload_config: Callable[[], None]) -> None:
        super().__init__(daemon, reload_config)
        self._host = daemon

    def vm_set(
        self,
        vm: str,
        qos_class: str | None = None,
        fast_reservation_bytes: float | None = None,
        slow_reservation_bytes: float | None = None,
        fast_limit_bytes: float | None = None,
        slow_limit_bytes: float | None = None,
    ) -> dict[str, Any]:
        """Change a VM's class, reservations or limits (see Daemon.vm_set).

        Sizes arrive as JSON numbers, which do not tell 1024 from 1024.0: an
        integral float is taken as that int, anything else is refused.

        Raises:
            ConfigError: a size is not a whole number of bytes, or as
                :meth:`Daemon.vm_set`.
            NoSuchDomain: as :meth:`Daemon.vm_set`.
        """
        for name, value in (("vm", vm), ("qos_class", qos_class)):
            if not isinstance(value, str) and (name == "vm" or value is not None):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        res = _tier_sizes("reservation", fast_reservation_bytes, slow_reservation_bytes)
        lim = _tier_sizes("limit", fast_limit_bytes, slow_limit_bytes)
        meta = self._host.vm_set(vm, qos_class, res, lim)
        return {
            "vm": vm,
            "class": meta.qos_class,
            "tiers": {
                t.tier.value: {
                    "reservation_bytes": t.reservation_bytes,
                    "limit_bytes": t.limit_bytes,
                }
                for t in meta.tiers
            },
        }


def _whole_bytes(name: str, value: object) -> int:
    """``value`` as an int number of bytes; integral floats (1024.0) included."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{name} must be a whole number of bytes, got {value!r}")


def _tier_sizes(kind: str, fast: object, slow: object) -> dict[Tier, int]:
    """The ``fast_<kind>_bytes`` and ``slow_<kind>_bytes`` given (not None)."""
    given = {Tier.FAST: fast, Tier.SLOW: slow}
    return {
        tier: _whole_bytes(f"{tier.value}_{kind}_bytes", value)
        for tier, value in given.items()
        if value is not None
    }
