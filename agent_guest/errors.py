"""What agent_guest raises: hypertier_common's error base (``GuestError`` is
its name here, so errors cross the control socket as the host's do), the
common kinds, and :class:`NoSuchProcess`, the kind only this agent raises.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypertier_common.errors import AgentError, NoSuchProcess, kinds

__all__ = ["ERROR_KINDS", "GuestError", "NoSuchProcess"]

GuestError = AgentError
"""Base of every error agent_guest raises on purpose."""

ERROR_KINDS: Mapping[str, type[AgentError]] = kinds(NoSuchProcess)
