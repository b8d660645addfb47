"""``hypertier-host status`` for people: host tiers, VMs, allotments, guest reports."""

from __future__ import annotations

from typing import Any

__all__ = ["format_status"]

MiB = 1 << 20


def _mib(value: int | None) -> str:
    return "-" if value is None else str(value // MiB)


def format_status(status: dict[str, Any]) -> str:
    """Human-readable status: a host summary and one line per VM and tier."""
    host = status["host"]
    lines = [
        f"hypertier-host {status['version']}: backend {status['backend']}, "
        f"{status['ticks']} ticks ({status['tick_failures']} failed), "
        f"last tick {status['last_tick_ms']:.2f} ms",
        f"fast capacity {_mib(host['fast_capacity_bytes'])} MiB, slow capacity "
        f"{_mib(host['slow_capacity_bytes'])} MiB "
        f"(overcommit x{host['slow_overcommit_ratio']})",
    ]
    if host["slow_tier_emulated"]:
        lines.append("slow tier EMULATED: no CPU-less host node; it shares fast memory")
    missing = {"kvm-stats", "virtio-mem-resize"} - set(status["capabilities"])
    if missing:
        lines.append(f"not available on this host: {', '.join(sorted(missing))}")
    lines.append(
        f"{'VM':<20} {'CLASS':<8} {'TIER':<5} {'REQ':>7} {'CUR':>7} {'TARGET':>7} "
        f"{'RES':>7} {'LIMIT':>7}  GUEST   (sizes in MiB)"
    )
    for vm, st in sorted(status["vms"].items()):
        g = st["guest"]
        guest = (
            "throttled"
            if g["throttled"]
            else f"hot {_mib(g['hot_bytes'])} MiB, pressure {g['pressure']:.2f}"
            if g["report_age_s"] is not None
            else "no report"
        )
        for tier, t in st["tiers"].items():
            lines.append(
                f"{vm:<20} {st['class']:<8} {tier:<5} {_mib(t['requested_bytes']):>7} "
                f"{_mib(t['current_bytes']):>7} {_mib(t['target_bytes']):>7} "
                f"{_mib(t['reservation_bytes']):>7} {_mib(t['limit_bytes']):>7}  "
                + (guest if tier == "fast" else "")
            )
    return "\n".join(lines)
