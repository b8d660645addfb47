"""The guest agent's control API (:class:`Controller`).

``hypertier-guest status|reload|stop`` call it through the control socket
(hypertier_common.control: the transport and these three methods, the same
for both agents).
"""

from __future__ import annotations

from hypertier_common.control import BaseController

__all__ = ["Controller"]


class Controller(BaseController):
    """``status`` (the counters of ``Daemon.status``), ``reload`` and ``stop``."""
