"""``hypertier-guest status`` for people: the daemon's counters with their units."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_status"]

MiB = 1 << 20


def _mib(value: object) -> str:
    return "-" if value is None else f"{int(value) / MiB:.1f} MiB"  # type: ignore[call-overload]


def format_status(st: Mapping[str, Any]) -> str:
    """Human-readable status from ``Daemon.status()`` (as the socket returns it)."""
    failures = st.get("failures") or {}
    failed = ", ".join(f"{name} {count}" for name, count in sorted(failures.items()))
    targets = st["targets"]
    allot = st.get("allot_fast_bytes")
    fixed = st.get("fast_fixed_bytes")
    lines = [
        f"hypertier-guest {st['version']}: {st['epochs']} epochs, "
        f"last tick {st['last_tick_ms']:.2f} ms, {st['tick_failures']} failed, "
        f"agent CPU {st['cpu_s']:.2f} s",
        f"sampling: source {st['source']}, period {st['sample_period']} events, "
        f"{st['samples']} samples ({st['lost']} lost, {st['throttled']} throttled)",
        "managed: "
        + (", ".join(f"pid {p}" for p in targets) if targets else "no processes")
        + f" in {st['ranges']} ranges",
        f"hot set {_mib(st['hot_bytes'])}, demand {_mib(st['demand_bytes'])}, "
        "fast allotment "
        + (_mib(allot) if allot is not None else "none yet (no word from the host)")
        + (f" + {_mib(fixed)} beside the device" if fixed is not None else ""),
        f"pages: {st['pages_promoted']} promoted, {st['pages_demoted']} demoted, "
        f"{st['pages_scanned']} scanned ({st.get('pages_scan_cached', 0)} more "
        f"from the cache), {st['dropped_pids']} processes dropped"
        + (f"; failed moves: {failed}" if failed else ""),
        f"host channel: {st['reports_sent']} reports sent, "
        f"{st['allots_received']} allotments received, "
        f"{st['channel_errors']} channel errors, {st['wire_errors']} bad messages",
        "capabilities: " + (", ".join(st["capabilities"]) or "none"),
    ]
    return "\n".join(lines)
