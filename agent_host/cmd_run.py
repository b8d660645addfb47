"""Run the host daemon in the foreground (systemd supervises it)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_host import config
from agent_host.backend import BACKENDS, HostBackend
from agent_host.cmd_common import DEFAULT_CONFIG, load_config
from agent_host.control import Controller
from agent_host.daemon import Daemon
from agent_host.metrics import MetricsServer
from agent_host.metrics import registry as metrics_registry
from agent_host.status import format_status
from hypertier_common import VERSION, service
from hypertier_common.cli import (
    add_run_flags,
    check_standalone,
    config_path,
)
from hypertier_common.clock import Clock, SystemClock
from hypertier_common.control import ControlServer
from hypertier_common.prometheus import render
from hypertier_common.signals import Signals

__all__ = ["DAEMON", "EPILOG", "HELP", "add_arguments", "backend_options", "main"]

DAEMON = True
HELP = "run the host daemon in the foreground (systemd supervises it)"
EPILOG = """examples:
  hypertier-host run -c /etc/hypertier/host.toml
  hypertier-host run --backend libvirt --once -v
"""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_flags(parser, DEFAULT_CONFIG, BACKENDS)


def backend_options(cfg: config.Config) -> dict[str, Any]:
    """Constructor arguments of the configured backend (the libvirt one)."""
    return {
        "uri": cfg.host.uri,
        "root": Path(cfg.host.sysfs_root),
        "fast_nodes": cfg.host.fast_nodes,
        "slow_nodes": cfg.host.slow_nodes,
        "max_read_bytes": cfg.channel.max_read_bytes,
    }


def serve(
    cfg: config.Config,
    backend: HostBackend,
    clock: Clock,
    load: Callable[[], config.Config],
    on_ready: Callable[[Daemon], None] | None = None,
    signals: Signals | None = None,
) -> int:
    """Run the daemon with its control socket and metrics until stopped.

    ``load`` gives the configuration again on ``reload`` (SIGHUP or the
    control request); ``on_ready`` gets the daemon once the socket is up.
    """
    daemon = Daemon(cfg, backend, clock)

    def reload() -> None:
        daemon.reload(load())

    try:  # metrics bound first: a busy port leaves no control socket
        extra = []
        if cfg.metrics.listen:
            reg = metrics_registry(
                daemon.status, daemon.domain_stats, daemon.tick_stats.durations, VERSION
            )
            extra.append(MetricsServer(cfg.metrics.listen, lambda: render(reg)))
        server = ControlServer(Controller(daemon, reload), cfg.host.control_socket)
        service.serve(daemon, server, reload, signals, on_ready, extra)
    finally:
        backend.close()
    return 0


def main(args: argparse.Namespace) -> int:
    path = config_path(args, DEFAULT_CONFIG)

    def load() -> config.Config:
        cfg = load_config(path)
        if args.backend:
            host = dataclasses.replace(cfg.host, backend=args.backend)
            cfg = dataclasses.replace(cfg, host=host)
        return cfg

    cfg = load()
    check_standalone(cfg.host.backend, "libvirt")
    backend = BACKENDS.make(cfg.host.backend, **backend_options(cfg))
    if args.once:
        try:
            return service.once(Daemon(cfg, backend, SystemClock()), format_status)
        finally:
            backend.close()
    return serve(cfg, backend, SystemClock(), load, signals=args.signals)
