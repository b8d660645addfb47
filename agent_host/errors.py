"""The exception hierarchy of agent_host (STYLE.md section 4)."""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackendError",
    "ConfigError",
    "HostError",
    "NoSuchDomain",
    "Unsupported",
]


class HostError(Exception):
    """Base of every error agent_host raises on purpose."""


class ConfigError(HostError):
    """A configuration file or value is invalid."""


class BackendError(HostError):
    """libvirt, QEMU or the emulator failed an operation."""


class Unsupported(HostError):
    """A capability this host does not offer."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not supported here: {reason}")
        self.what = what
        self.reason = reason


class AccessDenied(HostError):
    """libvirt or the OS refused for lack of privilege."""

    def __init__(self, what: str, hint: str = "") -> None:
        msg = f"access denied: {what}"
        super().__init__(f"{msg} ({hint})" if hint else msg)
        self.what = what
        self.hint = hint


class NoSuchDomain(HostError):
    """The VM is not (or no longer) defined or running."""

    def __init__(self, vm: str) -> None:
        super().__init__(f"domain {vm!r} not found")
        self.vm = vm
