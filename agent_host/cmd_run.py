"""Run the host daemon in the foreground (systemd supervises it)."""

from __future__ import annotations

import argparse
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_host import config
from agent_host.backend import HostBackend, make_backend
from agent_host.clock import Clock, SystemClock
from agent_host.cmd_common import add_config_flag, load_config
from agent_host.control import Controller, ControlServer
from agent_host.daemon import VERSION, Daemon
from agent_host.errors import ConfigError, HostError
from agent_host.metrics import MetricsServer
from agent_host.metrics import registry as metrics_registry
from hypertier_common.prometheus import render as render_registry
from hypertier_common.systemd import Notifier

EPILOG = """examples:
  hypertier-host run -c /etc/hypertier/host.toml
  hypertier-host run --backend libvirt --once -v
"""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flag(parser)
    parser.add_argument(
        "--backend",
        choices=config.BACKEND_NAMES,
        help="override host.backend of the configuration",
    )
    parser.add_argument(
        "--once", action="store_true", help="run one tick, print status, and exit"
    )
    parser.set_defaults(signals=Signals())  # cli.main installs the handlers


def backend_options(cfg: config.Config) -> dict[str, Any]:
    """Constructor arguments of the configured backend."""
    if cfg.host.backend == "libvirt":
        return {
            "uri": cfg.host.uri,
            "root": Path(cfg.host.sysfs_root),
            "fast_nodes": cfg.host.fast_nodes,
            "slow_nodes": cfg.host.slow_nodes,
            "max_read_bytes": cfg.channel.max_read_bytes,
        }
    return {}


@dataclass
class Signals:
    """Events the CLI's signal handlers set (TERM/INT: stop, HUP: reload).

    Each handler sets its event and then ``wake``, which the daemon's signal
    thread waits on.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def request_reload(self) -> None:
        self.reload.set()
        self.wake.set()


def serve(
    cfg: config.Config,
    backend: HostBackend,
    clock: Clock,
    config_path: Path | None,
    on_ready: Callable[[Daemon], None] | None = None,
    signals: Signals | None = None,
) -> int:
    """Run the daemon with its control socket and metrics until stopped."""
    daemon = Daemon(cfg, backend, clock)
    signals = signals or Signals()

    def reload_config() -> None:
        if config_path is None:
            log.warning("reload: no configuration file; keeping the defaults")
            return
        daemon.reload(config.load(config_path))

    def on_signals() -> None:
        while True:
            signals.wake.wait()
            signals.wake.clear()
            if signals.reload.is_set():
                signals.reload.clear()
                try:
                    reload_config()
                except HostError as err:
                    log.error("reload failed, keeping the old configuration: %s", err)
            if signals.stop.is_set():
                daemon.stop()
                return

    metrics: MetricsServer | None = None
    if cfg.metrics.listen:  # bound first: a busy port leaves no control socket
        reg = metrics_registry(
            daemon.status, daemon.domain_stats, daemon.tick_durations, VERSION
        )
        metrics = MetricsServer(cfg.metrics.listen, lambda: render_registry(reg))
    controller = Controller(daemon, reload_config)
    server = ControlServer(controller, cfg.host.control_socket)
    threading.Thread(target=on_signals, name="signals", daemon=True).start()
    server.start()
    if metrics:
        metrics.start()
    notifier = Notifier()
    try:
        if on_ready:
            on_ready(daemon)
        # The backend is connected (libvirt) and the control socket listens.
        notifier.ready(daemon.summary())
        daemon.run(
            heartbeat=lambda: notifier.watchdog(daemon.summary()),
            heartbeat_every_s=notifier.watchdog_interval_s or math.inf,
        )
        notifier.stopping()
    finally:
        server.close()
        if metrics:
            metrics.close()
        backend.close()
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.backend:
        cfg = config.Config(
            host=config.HostConfig(**{**cfg.host.__dict__, "backend": args.backend}),
            policy=cfg.policy,
            channel=cfg.channel,
            classes=cfg.classes,
            metrics=cfg.metrics,
        )
    if cfg.host.backend == "emu":
        # emu.backends.host.EmuHostBackend needs a World; emu's own front end
        # (`hypertier`) and tests build one and call serve() or Daemon directly.
        raise ConfigError(
            "backend 'emu' runs inside the emulator (`hypertier run`), "
            "not as a standalone daemon"
        )
    backend = make_backend(cfg.host.backend, **backend_options(cfg))
    if args.once:
        try:
            daemon = Daemon(cfg, backend, SystemClock())
            daemon.tick()
            from agent_host.cmd_status import format_status

            print(format_status(daemon.status()))
        finally:
            backend.close()
        return 0
    return serve(cfg, backend, SystemClock(), args.config, signals=args.signals)
