"""Prometheus text exposition (format 0.0.4) of the daemon's status, and its server.

A tiny ``http.server`` thread on ``metrics.listen``; no client library needed.
See https://prometheus.io/docs/instrumenting/exposition_formats/.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent_host.backend import DomainStats
from agent_host.config import split_listen
from agent_host.errors import BackendError

__all__ = ["MetricsServer", "render"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        value: float | None,
        **labels: str,
    ) -> None:
        if value is None:
            return  # not exposed on this host: omit rather than fake a zero
        if name not in self._declared:
            self._declared.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")
        lbl = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.lines.append(
            f"{name}{{{lbl}}} {float(value)!r}" if lbl else f"{name} {float(value)!r}"
        )


def render(status: Mapping[str, Any], stats: Mapping[str, DomainStats]) -> str:
    """The metrics text for one scrape from ``Daemon.status()`` and stats."""
    w = _Writer()
    w.add("hypertier_host_ticks_total", "counter", "Policy ticks run.", status["ticks"])
    w.add(
        "hypertier_host_tick_failures_total",
        "counter",
        "Ticks that failed as a whole.",
        status["tick_failures"],
    )
    w.add(
        "hypertier_host_tick_seconds",
        "gauge",
        "Duration of the last tick.",
        status["last_tick_ms"] / 1000.0,
    )
    host = status["host"]
    for tier in ("fast", "slow"):
        w.add(
            "hypertier_host_capacity_bytes",
            "gauge",
            "Memory the policy may allot per tier (before slow overcommit).",
            host[f"{tier}_capacity_bytes"],
            tier=tier,
        )
    w.add(
        "hypertier_host_slow_tier_emulated",
        "gauge",
        "1 if no CPU-less host node exists and the slow tier shares fast memory.",
        1.0 if host["slow_tier_emulated"] else 0.0,
    )
    for vm, st in sorted(status["vms"].items()):
        w.add(
            "hypertier_vm_class_weight",
            "gauge",
            "QoS class weight of the VM.",
            st["weight"],
            vm=vm,
            qos_class=st["class"],
        )
        for tier, t in st["tiers"].items():
            for key, help_text in (
                ("requested_bytes", "Allotment requested from the guest."),
                ("current_bytes", "Allotment the guest has plugged."),
                ("target_bytes", "Allotment the policy wants."),
                ("reservation_bytes", "Guaranteed minimum of the tier."),
                ("limit_bytes", "Maximum of the tier."),
            ):
                w.add(
                    f"hypertier_vm_allotment_{key}",
                    "gauge",
                    help_text,
                    t[key],
                    vm=vm,
                    tier=tier,
                )
        w.add(
            "hypertier_vm_resizes_total",
            "counter",
            "Resizes issued.",
            st["resizes"],
            vm=vm,
        )
        guest = st["guest"]
        w.add(
            "hypertier_vm_guest_hot_bytes",
            "gauge",
            "Guest-reported hot set.",
            guest["hot_bytes"],
            vm=vm,
        )
        w.add(
            "hypertier_vm_guest_pressure",
            "gauge",
            "Guest-reported pressure.",
            guest["pressure"],
            vm=vm,
        )
        w.add(
            "hypertier_vm_guest_invalid_messages_total",
            "counter",
            "Invalid guest messages.",
            guest["invalid"],
            vm=vm,
        )
        w.add(
            "hypertier_vm_guest_throttled",
            "gauge",
            "1 while the guest's channel is throttled.",
            1.0 if guest["throttled"] else 0.0,
            vm=vm,
        )
    for vm, s in sorted(stats.items()):
        w.add(
            "hypertier_vm_remote_tlb_flush_total",
            "counter",
            "KVM remote TLB flushes (query-stats).",
            s.remote_tlb_flush,
            vm=vm,
        )
        w.add(
            "hypertier_vm_tlb_flush_total",
            "counter",
            "KVM vCPU TLB flushes (query-stats).",
            s.tlb_flush,
            vm=vm,
        )
        w.add(
            "hypertier_vm_exits_total",
            "counter",
            "KVM exits (query-stats).",
            s.exits,
            vm=vm,
        )
        w.add(
            "hypertier_vm_cpu_seconds_total",
            "counter",
            "vCPU time.",
            s.cpu_time_s,
            vm=vm,
        )
        w.add(
            "hypertier_vm_balloon_current_bytes",
            "gauge",
            "Balloon size.",
            s.balloon_current_bytes,
            vm=vm,
        )
    return "\n".join(w.lines) + "\n"


class MetricsServer:
    """Serve ``source()`` at ``/metrics`` on ``listen`` ("address:port").

    The address is IPv4, a name, or IPv6 in brackets (``"[::1]:9464"``); the
    socket family is the one ``getaddrinfo`` gives for it.

    Raises:
        ConfigError: ``listen`` is malformed.
        BackendError: the address cannot be resolved or bound.
    """

    def __init__(self, listen: str, source: Callable[[], str]) -> None:
        host, port = split_listen(listen)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = source().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        try:
            family, _, _, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]

            class Server(ThreadingHTTPServer):
                address_family = family

            self._server = Server((str(addr[0]), port), Handler)
        except OSError as err:
            raise BackendError(f"metrics.listen {listen}: {err}") from err
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on port %d", self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
