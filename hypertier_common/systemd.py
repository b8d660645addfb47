"""systemd supervision: sd_notify(3) readiness, watchdog, status; journald priorities.

Both agents run as ``Type=notify`` services. :class:`Notifier` sends ``READY=1``
once the daemon serves, ``WATCHDOG=1`` from its main loop (a loop that stalls
longer than ``WatchdogSec=`` is killed and restarted by systemd) and ``STATUS=``
lines that ``systemctl status`` shows. Outside systemd (no ``$NOTIFY_SOCKET``)
every call does nothing.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract namespace):
https://www.freedesktop.org/software/systemd/man/sd_notify.html. It is a few lines
of socket code, so no binding library is needed.

:func:`stderr_handler` prefixes each log line with its syslog priority (``<3>``
for errors, sd-daemon(3)) when stderr is connected to the journal
(``$JOURNAL_STREAM`` names stderr's device and inode, systemd.exec(5)), so
``journalctl -p err`` isolates errors; on a terminal the lines stay plain.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO

__all__ = [
    "JournalFormatter",
    "Notifier",
    "journal_priority",
    "stderr_handler",
    "stream_is_journal",
    "wait_beating",
]

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) to the service manager named by ``env`` (os.environ).

    ``watchdog_interval_s`` is half of ``WatchdogSec=`` (as sd_watchdog_enabled(3)
    recommends) when the watchdog is on for this process, else ``None``. Sending
    never raises: a supervisor that went away must not stop the daemon.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (``$NOTIFY_SOCKET`` is set)."""
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); True if delivered."""
        if self._address is None:
            return False
        text = "\n".join(
            f"{k.upper()}={v.replace(chr(10), ' ')}" for k, v in fields.items()
        )
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
            ) as sock:
                sock.sendto(text.encode(), self._address)
        except OSError as err:
            if not self._warned:
                log.warning("cannot notify systemd at %r: %s", self._address, err)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """The daemon serves: ``READY=1`` (and a status line)."""
        if status:
            return self.send(ready="1", status=status)
        return self.send(ready="1")

    def status(self, text: str) -> bool:
        """Replace the status line ``systemctl status`` shows."""
        return self.send(status=text)

    def watchdog(self, status: str = "") -> bool:
        """The main loop is alive: ``WATCHDOG=1`` (and a new status line)."""
        if status:
            return self.send(watchdog="1", status=status)
        return self.send(watchdog="1")

    def reloading(self) -> bool:
        return self.send(reloading="1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping="1", status=status)


class _Clock(Protocol):
    def monotonic(self) -> float: ...
    def wait(self, event: threading.Event, timeout_s: float) -> bool: ...


def wait_beating(
    clock: _Clock,
    stop: threading.Event,
    deadline: float,
    heartbeat: Callable[[], object] | None,
    every_s: float = math.inf,
) -> None:
    """Call ``heartbeat`` now, then wait until ``deadline`` (clock time) or
    ``stop``, calling it again at least every ``every_s`` of the wait.

    A daemon's loop calls this between ticks: the heartbeat (``WATCHDOG=1``)
    then comes from the loop itself and stops when a tick hangs.
    """
    if heartbeat is not None:
        heartbeat()
    while not stop.is_set():
        left = deadline - clock.monotonic()
        if left <= 0:
            return
        if clock.wait(stop, min(left, every_s)):
            return
        if heartbeat is not None:
            heartbeat()


# logging level -> syslog priority (syslog(3): LOG_CRIT 2 ... LOG_DEBUG 7).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4))


def journal_priority(levelno: int) -> int:
    """The syslog priority of a logging level (INFO 6, DEBUG 7)."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 6 if levelno >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    """``inner``'s text with ``<N>`` before every line, N the record's priority.

    journald reads one entry per line of a stream; a traceback's lines carry the
    prefix too, so they stay at the record's priority.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        text = self._inner.format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


def stream_is_journal(
    stream: TextIO | None = None, env: Mapping[str, str] | None = None
) -> bool:
    """True if ``stream`` (stderr) is the journal stream systemd connected."""
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def stderr_handler(
    formatter: logging.Formatter,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """A handler writing ``formatter``'s text to stderr, with journald priorities
    when stderr is the journal (then the level name is in the entry's metadata)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream, env):
        handler.setFormatter(JournalFormatter(formatter))
    else:
        handler.setFormatter(formatter)
    return handler
