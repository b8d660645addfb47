"""An agent's ``cmd_run.serve`` (control socket, metrics, daemon loop) in a thread
for a test, on a clock that stands still: the loop ticks once at start, then the
test ticks the daemon it gets back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.clock import FakeClock
from hypertier_common.signals import Signals
from tests import DATA

__all__ = ["TIMEOUT_S", "Served", "host_config_file", "serving", "start"]

TIMEOUT_S = 60.0  # a guard against a hang, never a timing


def host_config_file(directory: Path, extra: str = "") -> Path:
    """``directory``/host.toml: the emulator backend, the control socket beside it,
    a captured one-node sysfs, a policy that ticks only when the test says;
    ``extra`` appended (more tables)."""
    path = directory / "host.toml"
    path.write_text(
        f"""
[host]
backend = "emu"
uri = "test:///default"
control_socket = "{directory}/host.sock"
sysfs_root = "{DATA / "host-sysfs-1node"}"
channel_dir = "/tmp"

[policy]
interval_s = 3600
host_reserved_bytes = 0
{extra}
"""
    )
    return path


@dataclass
class Served:
    thread: threading.Thread
    daemon: Any  # agent_host.daemon.Daemon or agent_guest.daemon.Daemon
    signals: Signals

    def stop(self) -> None:
        """Ask for a stop the way SIGTERM does and wait for the thread."""
        self.signals.request_stop()
        self.thread.join(TIMEOUT_S)


def start(
    serve: Callable[..., int],
    cfg: object,
    backend: object,
    load: Callable[[], object],
    signals: Signals | None = None,
) -> Served:
    """Start ``serve(cfg, backend, clock, load, ...)`` (either agent's
    ``cmd_run.serve``) in a thread; return once its daemon is ready."""
    ready = threading.Event()
    holder: list[Any] = []

    def on_ready(daemon: Any) -> None:
        holder.append(daemon)
        ready.set()

    signals = Signals() if signals is None else signals
    thread = threading.Thread(
        target=serve,
        args=(cfg, backend, FakeClock(advance_on_wait=False), load),
        kwargs={"on_ready": on_ready, "signals": signals},
    )
    thread.start()
    assert ready.wait(TIMEOUT_S)
    return Served(thread, holder[0], signals)


@contextmanager
def serving(
    serve: Callable[..., int],
    cfg: object,
    backend: object,
    load: Callable[[], object],
) -> Iterator[Served]:
    """:func:`start`, then stop at the end of the block; the thread must end."""
    served = start(serve, cfg, backend, load)
    try:
        yield served
    finally:
        served.stop()
    assert not served.thread.is_alive()
