"""``hypertier-guest run``: the foreground daemon (systemd supervises it)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable

from agent_guest import config
from agent_guest.backend import BACKENDS, GuestBackend
from agent_guest.control import Controller
from agent_guest.daemon import Daemon
from agent_guest.status import format_status
from hypertier_common import VERSION, service
from hypertier_common.cli import (
    add_run_flags,
    check_standalone,
    config_path,
)
from hypertier_common.clock import Clock, SystemClock
from hypertier_common.control import ControlServer
from hypertier_common.errors import BackendError
from hypertier_common.metrics import MetricsError, MetricsServer
from hypertier_common.signals import Signals

__all__ = ["DAEMON", "EPILOG", "HELP", "add_arguments", "backend_options", "main"]

log = logging.getLogger(__name__)

DAEMON = True
HELP = "run the agent in the foreground (systemd supervises it)"
EPILOG = """examples:
  hypertier-guest run -c /etc/hypertier/guest.toml
  hypertier-guest run --once -v          # one epoch, print the status, exit
  hypertier-guest run --backend linux --socket /tmp/guest.sock
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_flags(parser, config.DEFAULT_CONFIG, BACKENDS)
    parser.add_argument(
        "--socket", default=None, metavar="PATH", help="override guest.control_socket"
    )


def backend_options(cfg: config.Config) -> dict[str, object]:
    """Constructor options of the configured backend (the linux one)."""
    return {
        "channel_path": cfg.guest.channel_path,
        "fault_event": cfg.sampler.fault_event,
        "induce_write_faults": cfg.sampler.induce_write_faults,
        "move_shared_pages": cfg.mover.move_shared_pages,
    }


def main(args: argparse.Namespace) -> int:
    path = config_path(args, config.DEFAULT_CONFIG)

    def load() -> config.Config:
        cfg = config.load(path) if path is not None else config.Config()
        guest = cfg.guest
        if args.backend:
            guest = dataclasses.replace(guest, backend=args.backend)
        if args.socket:
            guest = dataclasses.replace(guest, control_socket=args.socket)
        return dataclasses.replace(cfg, guest=guest)

    cfg = load()
    check_standalone(cfg.guest.backend, "linux")
    backend = BACKENDS.make(cfg.guest.backend, **backend_options(cfg))
    if args.once:
        daemon = Daemon(cfg, backend, SystemClock())
        try:
            return service.once(daemon, format_status)
        finally:
            daemon.shutdown()
    return serve(cfg, backend, SystemClock(), load, signals=args.signals)


def serve(
    cfg: config.Config,
    backend: GuestBackend,
    clock: Clock,
    load_config: Callable[[], config.Config],
    signals: Signals | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> int:
    """Run a daemon with its control socket (and metrics) until stopped.

    ``load_config`` gives the configuration again on ``reload`` (SIGHUP or the
    control request); ``on_ready`` gets the daemon once the sockets are up.
    Returns 0 on a clean stop.
    """
    try:
        daemon = Daemon(cfg, backend, clock)
    except BaseException:
        backend.close()
        raise

    def reload() -> None:
        daemon.reload(load_config())

    try:  # metrics bound first: a busy port leaves no control socket
        extra = (
            [_metrics_server(cfg.metrics.listen, daemon)] if cfg.metrics.listen else []
        )
        server = ControlServer(Controller(daemon, reload), cfg.guest.control_socket)
    except BaseException:
        daemon.shutdown()
        raise
    service.serve(daemon, server, reload, signals, on_ready, extra)
    return 0


def _metrics_server(listen: str, daemon: Daemon) -> MetricsServer:
    """The Prometheus endpoint (prometheus_client is imported only here)."""
    from agent_guest.metrics import registry
    from hypertier_common.prometheus import render

    reg = registry(daemon.status, daemon.tick_stats.durations, VERSION)
    try:
        return MetricsServer(listen, lambda: render(reg), title="HyperTier guest agent")
    except MetricsError as err:
        raise BackendError(str(err)) from err
