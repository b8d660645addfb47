"""The exception hierarchy of agent_host.

The base and the common kinds are hypertier_common's, so both agents' errors
cross the control socket alike; ``HostError`` is this agent's name for the base.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypertier_common.errors import AgentError, kinds

__all__ = ["ERROR_KINDS", "HostError", "NoSuchDomain"]

HostError = AgentError
"""Base of every error agent_host raises on purpose."""


class NoSuchDomain(HostError):
    """The VM is not (or no longer) defined or running."""

    WIRE_ATTRS = ("vm",)

    def __init__(self, vm: str) -> None:
        super().__init__(f"domain {vm!r} not found")
        self.vm = vm


ERROR_KINDS: Mapping[str, type[AgentError]] = kinds(NoSuchDomain)
