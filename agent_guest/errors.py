"""What agent_guest raises: the error base and kinds of
hypertier_common (``GuestError`` is the base's name here, so errors cross the
control socket as the host's do) and :class:`NoSuchProcess`, its own kind.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypertier_common.errors import AgentError, kinds

__all__ = ["ERROR_KINDS", "GuestError", "NoSuchProcess"]

GuestError = AgentError
"""Base of every error agent_guest raises on purpose."""


class NoSuchProcess(GuestError):
    """The process exited (ESRCH, or /proc/<pid> vanished)."""

    WIRE_ATTRS = ("pid",)

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} no longer exists")
        self.pid = pid


ERROR_KINDS: Mapping[str, type[AgentError]] = kinds(NoSuchProcess)
