"""What agent_host raises: hypertier_common's error base (``HostError`` is its
name here, so errors cross the control socket as the guest's do), the common
kinds, and :class:`NoSuchDomain`, the kind only this agent raises.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypertier_common.errors import AgentError, NoSuchDomain, kinds

__all__ = ["ERROR_KINDS", "HostError", "NoSuchDomain"]

HostError = AgentError
"""Base of every error agent_host raises on purpose."""

ERROR_KINDS: Mapping[str, type[AgentError]] = kinds(NoSuchDomain)
