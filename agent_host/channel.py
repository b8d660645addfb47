"""Per-VM guest channel state: line splitting, validation, rate limit, throttling.

Bytes come from ``HostBackend.channel_recv`` (virtio-serial port
``org.hypertier.0``); lines are decoded with :mod:`hypertier_wire`. The host
trusts no guest: a guest that sends too fast or too much garbage is throttled
(its input ignored for ``throttle_s``) and reported; a report that contradicts
what the host provisioned is invalid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import hypertier_wire as wire
from agent_host.config import ChannelConfig

__all__ = ["GuestChannel", "GuestReport"]

log = logging.getLogger(__name__)

# Guest node memory may exceed the plugged allotment by its boot memory; no
# plausible boot memory is larger than this.
_MAX_BOOT_SLACK_BYTES = 1 << 40


@dataclass(frozen=True)
class GuestReport:
    """A validated guest report, with the time it arrived and derived sums."""

    received_s: float
    report: wire.Report
    used_bytes: int = 0
    fast_total_bytes: int = 0
    slow_total_bytes: int = 0
    fast_used_bytes: int = 0

    @classmethod
    def of(cls, received_s: float, report: wire.Report) -> GuestReport:
        used = fast = slow = fast_used = 0
        for n in report.nodes:
            used += n.used_bytes
            if n.tier == "fast":
                fast += n.total_bytes
                fast_used += n.used_bytes
            else:
                slow += n.total_bytes
        return cls(received_s, report, used, fast, slow, fast_used)

    def node_total_bytes(self, tier: str) -> int:
        return self.fast_total_bytes if tier == "fast" else self.slow_total_bytes


class GuestChannel:
    """What the host knows about one VM's guest agent.

    ``feed`` takes raw bytes and the time; the latest valid report, counters
    and the throttle state are attributes read by the daemon and ``status``.
    """

    def __init__(self, vm: str, cfg: ChannelConfig) -> None:
        self.vm = vm
        self._cfg = cfg
        self._reader = wire.LineReader()
        self._tokens = float(cfg.burst_msgs)
        self._last_s: float | None = None
        self.latest: GuestReport | None = None
        self.hello: wire.Hello | None = None
        self.sessions = 0  # hellos accepted: agent starts, restarts, re-hellos
        self.messages = 0
        self.invalid = 0
        self.rate_limited = 0
        self.lines = 0  # complete lines, blank ones included
        self.blank_lines = 0
        self.bytes_received = 0
        self.bytes_discarded = 0  # over the per-tick budget or while throttled
        self.over_budget = 0  # feeds (ticks) that went over the byte budget
        self.throttled_until_s = float("-inf")
        self.throttle_count = 0
        self.last_error = ""
        self._strikes = 0
        self._strikes_since_s = float("-inf")
        self._last_seq = -1

    @property
    def dropped_lines(self) -> int:
        return self._reader.dropped

    def throttled(self, now_s: float) -> bool:
        return now_s < self.throttled_until_s

    def reconfigure(self, cfg: ChannelConfig) -> None:
        self._cfg = cfg
        self._tokens = min(self._tokens, float(cfg.burst_msgs))

    def reconnected(self) -> None:
        """The transport reconnected: a partial line of the old stream is dropped."""
        self._reader.reset()

    def feed(self, data: bytes, now_s: float, max_bytes: dict[str, int]) -> bool:
        """Consume one tick's ``data``; True if a hello arrived (the host answers).

        The first ``channel.max_bytes_per_tick`` bytes are split into lines;
        the rest is discarded unread and is one strike. Each line, blank or not,
        takes a token of the rate limit; lines beyond the tokens are counted
        (not decoded) and each is a strike. A hello starts a new session: the
        sequence numbers of the agent's reports start again.

        ``max_bytes`` maps tier name to the most memory the guest can have on
        that tier (boot memory excluded); a report claiming more is invalid.
        """
        self._refill(now_s)
        self.bytes_received += len(data)
        if self.throttled(now_s):
            self.bytes_discarded += len(data)
            self._reader.discard(data)
            return False
        budget = self._cfg.max_bytes_per_tick
        dropped_before = self._reader.dropped
        lines, excess = self._reader.split(data[:budget], int(self._tokens))
        if len(data) > budget:
            self.over_budget += 1
            self.bytes_discarded += len(data) - budget
            self._reader.discard(data[budget:])
            self._strike(now_s, f"more than channel.max_bytes_per_tick ({budget})")
        got_hello = False
        self.lines += len(lines) + excess
        self._tokens -= len(lines)
        for line in lines:
            if now_s < self.throttled_until_s:
                break  # throttled by the strikes of this very chunk
            if not line.strip():
                self.blank_lines += 1
                continue
            try:
                msg = wire.decode(line)
                self._check(msg, max_bytes)
            except wire.WireError as err:
                self.invalid += 1
                self.last_error = str(err)[:200]
                self._strike(now_s, self.last_error)
                continue
            self.messages += 1
            if isinstance(msg, wire.Hello):
                self.hello = msg
                self.sessions += 1
                self._last_seq = -1  # a (re)started agent counts from 1 again
                got_hello = True
            elif isinstance(msg, wire.Report):
                self._last_seq = msg.seq
                self.latest = GuestReport.of(now_s, msg)
        if excess:
            self.rate_limited += excess
            self._strike(now_s, "message rate above channel.max_msgs_per_s", excess)
        over_long = self._reader.dropped - dropped_before
        if over_long:
            self.invalid += over_long
            self._strike(
                now_s,
                f"{over_long} line(s) over {wire.MAX_LINE_BYTES} bytes",
                over_long,
            )
        return got_hello and not self.throttled(now_s)

    def _check(self, msg: wire.Message, max_bytes: dict[str, int]) -> None:
        if isinstance(msg, wire.Allot | wire.Plugged):
            kind = "allot" if isinstance(msg, wire.Allot) else "plugged"
            raise wire.WireError(f"type: {kind} is host -> guest only")
        if not isinstance(msg, wire.Report):
            return
        if msg.seq <= self._last_seq:
            raise wire.WireError(f"seq: {msg.seq} not after {self._last_seq}")
        seen: set[int] = set()
        totals = {"fast": 0, "slow": 0}
        for usage in msg.nodes:
            if usage.node in seen:
                raise wire.WireError(f"nodes: node {usage.node} reported twice")
            seen.add(usage.node)
            totals[usage.tier] += usage.total_bytes
        for tier, total in totals.items():
            if total > max_bytes.get(tier, 0) + _MAX_BOOT_SLACK_BYTES:
                raise wire.WireError(f"nodes: {tier} total {total} beyond provisioned")
        if msg.hot_bytes > totals["fast"] + totals["slow"]:
            raise wire.WireError(f"hot_bytes: {msg.hot_bytes} > guest memory")

    def _refill(self, now_s: float) -> None:
        if self._last_s is not None and now_s > self._last_s:
            self._tokens = min(
                float(self._cfg.burst_msgs),
                self._tokens + (now_s - self._last_s) * self._cfg.max_msgs_per_s,
            )
        self._last_s = now_s

    def _strike(self, now_s: float, why: str, count: int = 1) -> None:
        # Strikes count within a window of channel.throttle_s: a guest is not
        # throttled for one stale line after each of many restarts over a day.
        if now_s - self._strikes_since_s > self._cfg.throttle_s:
            self._strikes = 0
            self._strikes_since_s = now_s
        self._strikes += count
        if self._strikes >= self._cfg.max_invalid:
            self._strikes = 0
            self._strikes_since_s = float("-inf")
            self.throttled_until_s = now_s + self._cfg.throttle_s
            self.throttle_count += 1
            self.latest = None  # a misbehaving guest's reports are not trusted
            log.warning(
                "guest of %s misbehaves (%s); ignoring it for %.0f s",
                self.vm,
                why,
                self._cfg.throttle_s,
            )
