"""The exception hierarchy of agent_guest (STYLE.md section 4)."""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackendError",
    "ConfigError",
    "GuestError",
    "NoSuchProcess",
    "Unsupported",
]


class GuestError(Exception):
    """Base of every error agent_guest raises on purpose."""


class ConfigError(GuestError):
    """A configuration file or value is invalid."""


class BackendError(GuestError):
    """The OS (or the emulator) failed an operation for a reason of its own."""


class Unsupported(GuestError):
    """A capability this machine does not offer (no PMU, no page_idle, ...)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not supported here: {reason}")
        self.what = what
        self.reason = reason


class AccessDenied(GuestError):
    """The kernel refused for lack of privilege (perf_event_paranoid, capabilities)."""

    def __init__(self, what: str, hint: str = "") -> None:
        msg = f"access denied: {what}"
        super().__init__(f"{msg} ({hint})" if hint else msg)
        self.what = what
        self.hint = hint


class NoSuchProcess(GuestError):
    """The process exited (ESRCH, or /proc/<pid> vanished)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} no longer exists")
        self.pid = pid
