"""The error base of both agents and the error kinds the control wire carries.

Each agent names this base after itself (``agent_guest.errors.GuestError``,
``agent_host.errors.HostError``) and carries the common kinds plus its own
(``NoSuchProcess`` the guest's, ``NoSuchDomain`` the host's: both are defined
here so that a vanished target is told the same way by both agents). An error
crosses the control socket as its kind, its message and its ``WIRE_ATTRS``
(docs/wire-protocol.md), and comes back out of
:class:`hypertier_common.control.ControlClient` as the same class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "AccessDenied",
    "AgentError",
    "BackendError",
    "ConfigError",
    "InternalError",
    "NoSuchDomain",
    "NoSuchProcess",
    "NotRunning",
    "Unsupported",
    "error_from_wire",
    "error_to_wire",
    "kinds",
]


class AgentError(Exception):
    """Base of every error an agent raises on purpose (an operational failure).

    Anything else that escapes is a bug. ``WIRE_ATTRS`` names the structured
    attributes that travel over the control wire beside the message.
    """

    WIRE_ATTRS: ClassVar[tuple[str, ...]] = ()


class ConfigError(AgentError):
    """A configuration file, a value in it, or a request parameter is invalid."""


class BackendError(AgentError):
    """The OS, libvirt or the emulator failed an operation for a reason of its own."""


class Unsupported(AgentError):
    """A capability this machine does not offer (no PMU, no virtio-mem, ...)."""

    WIRE_ATTRS = ("what", "reason")

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not supported here: {reason}")
        self.what = what
        self.reason = reason


class AccessDenied(AgentError):
    """The kernel, libvirt or a socket refused for lack of privilege."""

    WIRE_ATTRS = ("what", "hint")

    def __init__(self, what: str, hint: str = "") -> None:
        msg = f"access denied: {what}"
        super().__init__(f"{msg} ({hint})" if hint else msg)
        self.what = what
        self.hint = hint


class NotRunning(AgentError):
    """No daemon answers on the control socket (``status`` exits 3 for it)."""

    WIRE_ATTRS = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"no daemon is running at {path} ({reason})")
        self.path = path
        self.reason = reason


class NoSuchProcess(AgentError):
    """A guest process exited (ESRCH, or /proc/<pid> vanished)."""

    WIRE_ATTRS = ("pid",)

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} no longer exists")
        self.pid = pid


class NoSuchDomain(AgentError):
    """A VM is not (or no longer) defined or running."""

    WIRE_ATTRS = ("vm",)

    def __init__(self, vm: str) -> None:
        super().__init__(f"domain {vm!r} not found")
        self.vm = vm


class InternalError(AgentError):
    """The daemon hit a bug while serving a control request (its log has the
    traceback)."""


_COMMON: tuple[type[AgentError], ...] = (
    ConfigError,
    BackendError,
    Unsupported,
    AccessDenied,
    NotRunning,
    InternalError,
)


def kinds(*extra: type[AgentError]) -> Mapping[str, type[AgentError]]:
    """Wire kind -> class: the common kinds plus an agent's own ``extra``."""
    return {cls.__name__: cls for cls in (*_COMMON, *extra)}


def error_to_wire(err: AgentError) -> dict[str, object]:
    """The ``error`` member of a failed control reply."""
    return {
        "kind": type(err).__name__,
        "message": str(err),
        "attrs": {name: getattr(err, name) for name in err.WIRE_ATTRS},
    }


def error_from_wire(raw: object, known: Mapping[str, type[AgentError]]) -> AgentError:
    """Rebuild the error a daemon sent: same class, message and attributes.

    A kind this client does not know (a newer daemon) comes back as a
    :class:`BackendError` that names it.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("message"), str):
        return BackendError(f"the daemon sent a malformed error: {raw!r:.200}")
    message: str = raw["message"]
    kind = raw.get("kind")
    cls = known.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return BackendError(f"{message} (error kind {kind!r})")
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    attrs = raw.get("attrs")
    for name in cls.WIRE_ATTRS:
        setattr(err, name, attrs.get(name) if isinstance(attrs, dict) else None)
    return err
