"""Logging set-up for both agents' command lines: one stderr handler, one format.

Only the CLI calls :func:`setup_logging`; modules log through
``logging.getLogger(__name__)``. Verbosity is the same on both agents: 0 (the
default) logs INFO and above (state changes, one summary per tick), each ``-v``
one level more (DEBUG), each ``-q`` one level less (WARNING, then ERROR).
:func:`make_formatter` is the one place that picks the line format; the journal
priority prefix is added on top of it when stderr is the journal.
"""

from __future__ import annotations

import json
import logging
from typing import TextIO

from hypertier_common.systemd import stderr_handler

__all__ = ["LOG_FORMATS", "level_for", "make_formatter", "setup_logging"]

LOG_FORMATS = ("text", "json")
_LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
_DEFAULT = _LEVELS.index(logging.INFO)


def level_for(verbosity: int) -> int:
    """The logging level of ``verbosity`` (count of ``-v`` minus count of ``-q``)."""
    return _LEVELS[max(0, min(len(_LEVELS) - 1, _DEFAULT + verbosity))]


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, so a collector keeps each record whole."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of the log format ``fmt`` (one of :data:`LOG_FORMATS`)."""
    if fmt == "json":
        return _JsonFormatter()
    if fmt == "text":
        return logging.Formatter("%(levelname)s %(name)s: %(message)s")
    raise ValueError(f"log format {fmt!r} unknown; choose from {LOG_FORMATS}")


_installed: list[logging.Handler] = []


def setup_logging(
    verbosity: int = 0, stream: TextIO | None = None, fmt: str = "text"
) -> None:
    """Send every record at ``level_for(verbosity)`` or above to ``stream``
    (stderr), with journald priorities when it is the journal
    (hypertier_common.systemd). Called again, it replaces its own handler and
    leaves others (a test's log capture) alone."""
    handler = stderr_handler(make_formatter(fmt), stream)
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(level_for(verbosity))
