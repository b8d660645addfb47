"""``hypertier-guest run``: the foreground daemon (systemd supervises it)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import threading
from collections.abc import Callable

from agent_guest import config
from agent_guest.backend import BACKENDS, GuestBackend, make_backend
from agent_guest.clock import Clock, SystemClock
from agent_guest.control import Controller, ControlServer
from agent_guest.daemon import VERSION, Daemon
from agent_guest.errors import BackendError, ConfigError
from hypertier_common.metrics import MetricsError, MetricsServer
from hypertier_common.systemd import Notifier

__all__ = ["EPILOG", "HELP", "add_arguments", "backend_options", "main", "serve"]

log = logging.getLogger(__name__)

HELP = "run the agent in the foreground"
EPILOG = """examples:
  hypertier-guest run -c /etc/hypertier/guest.toml
  hypertier-guest run --once -v          # one epoch, then exit
  hypertier-guest run --backend linux --socket /tmp/guest.sock
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=config.DEFAULT_CONFIG,
        help=f"TOML config file (default {config.DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--backend", choices=sorted(BACKENDS), help="override guest.backend"
    )
    parser.add_argument("--socket", default=None, help="override guest.control_socket")
    parser.add_argument(
        "--once", action="store_true", help="run one epoch and exit (smoke test)"
    )


def backend_options(cfg: config.Config) -> dict[str, object]:
    """Constructor options of the configured backend."""
    if cfg.guest.backend == "linux":
        return {
            "channel_path": cfg.guest.channel_path,
            "fault_event": cfg.sampler.fault_event,
            "induce_write_faults": cfg.sampler.induce_write_faults,
            "move_shared_pages": cfg.mover.move_shared_pages,
        }
    return {}


def _overrides(cfg: config.Config, args: argparse.Namespace) -> config.Config:
    guest = cfg.guest
    if args.backend:
        guest = dataclasses.replace(guest, backend=args.backend)
    if args.socket:
        guest = dataclasses.replace(guest, control_socket=args.socket)
    return dataclasses.replace(cfg, guest=guest)


def main(args: argparse.Namespace) -> int:
    path = args.config
    cfg = _overrides(config.load(path), args)
    try:
        backend = make_backend(cfg.guest.backend, **backend_options(cfg))
    except TypeError as err:
        raise ConfigError(
            f"guest.backend {cfg.guest.backend!r} cannot run standalone: {err}"
        ) from err
    return serve(
        cfg,
        backend,
        SystemClock(),
        lambda: _overrides(config.load(path), args),
        once=args.once,
        stop_event=getattr(args, "stop_event", None),
        reload_event=getattr(args, "reload_event", None),
    )


def serve(
    cfg: config.Config,
    backend: GuestBackend,
    clock: Clock,
    load_config: Callable[[], config.Config] | None = None,
    *,
    once: bool = False,
    stop_event: threading.Event | None = None,
    reload_event: threading.Event | None = None,
) -> int:
    """Run a daemon with its control socket until stopped; 0 on a clean stop."""
    try:
        daemon = Daemon(cfg, backend, clock, load_config, stop_event, reload_event)
    except BaseException:
        backend.close()
        raise
    metrics = None
    if cfg.metrics.listen:  # bound first: a busy port leaves no control socket
        try:
            metrics = _metrics_server(cfg.metrics.listen, daemon)
        except BaseException:
            backend.close()
            raise
    server = ControlServer(cfg.guest.control_socket, Controller(daemon))
    server.start()
    if metrics is not None:
        metrics.start()
    notifier = Notifier()
    try:
        if once:
            daemon.tick()
            daemon.shutdown()
        else:
            # The sampling source is chosen and the control socket listens.
            notifier.ready(daemon.summary())
            daemon.run(
                heartbeat=lambda: notifier.watchdog(daemon.summary()),
                heartbeat_every_s=notifier.watchdog_interval_s or math.inf,
            )
            notifier.stopping()
    finally:
        server.close()
        if metrics is not None:
            metrics.close()
    return 0


def _metrics_server(listen: str, daemon: Daemon) -> MetricsServer:
    """The Prometheus endpoint (prometheus_client is imported only here)."""
    from agent_guest.metrics import registry
    from hypertier_common.prometheus import render

    reg = registry(daemon.status, daemon.epoch_durations, VERSION)
    try:
        return MetricsServer(listen, lambda: render(reg), title="HyperTier guest agent")
    except MetricsError as err:
        raise BackendError(str(err)) from err
