"""The guest agent's session with the host agent over the virtio-serial channel.

Hello, allotments in, reports out (docs/wire-protocol.md, "Sessions"): who says
hello when, what an unasked host hello means, what the allotment and plugged
size make of the fast limit, when a report is due, and that placement goes on
without the host when the channel fails.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import hypertier_wire as wire
from agent_guest.backend import Capability, GuestBackend, NumaNode
from agent_guest.errors import GuestError
from agent_guest.policy import FastLimit
from hypertier_common.clock import Clock

__all__ = ["HELLO_ANSWER_INTERVALS", "HostLink", "LinkCounters"]

log = logging.getLogger(__name__)

HELLO_ANSWER_INTERVALS = 4
"""A hello of ours unanswered for this many report intervals was lost."""


@dataclass
class LinkCounters:
    """What the link counts (the daemon's ``status`` shows them)."""

    reports_sent: int = 0
    allots_received: int = 0
    channel_errors: int = 0
    wire_errors: int = 0


class HostLink:
    """Hello, the host's allotment and our reports, on ``backend``'s channel.

    ``allot_fast_bytes`` is the host's last fast allotment and
    ``plugged_fast_bytes`` what the fast device had plugged when the host last
    looked (each None until the host says); ``plugged_is_newer`` whether that
    size came after the last allotment (the host reads it again after each).
    Reports go out every report interval from the link's creation, and at
    once when the fast nodes fit again after the allotment went down.
    Nothing here raises: a failing channel is counted (``counters``) and
    logged once, and placement goes on without the host.
    """

    def __init__(self, backend: GuestBackend, clock: Clock, version: str) -> None:
        self._backend = backend
        self._clock = clock
        self.counters = LinkCounters()
        self._hello = wire.Hello("hypertier-guest", version)
        self._reader = wire.LineReader()
        self.allot_fast_bytes: int | None = None
        self.plugged_fast_bytes: int | None = None
        self.plugged_is_newer = False
        self._fast_limit = FastLimit()
        # A fit report is owed after a fast allotment went down: the host
        # unplugs once a report says the fast node fits, or after its
        # policy.shrink_notice_s, and the unplug path would pick the pages to
        # move itself (hot ones too).
        self._fit_owed = False
        self._next_report = clock.monotonic()
        self._seq = 0
        self._hello_sent = False
        self._hellos = 0  # hellos this process sent
        self._hello_s = -math.inf  # when the last one went out
        self._awaiting_answer = False  # a hello of ours the host has not answered
        self._channel_down = False

    @property
    def available(self) -> bool:
        return Capability.HOST_CHANNEL in self._backend.capabilities()

    @property
    def fast_fixed_bytes(self) -> int | None:
        """The fast nodes' memory beside the device (:class:`FastLimit`)."""
        return self._fast_limit.fixed_bytes

    def fast_limit(self, total: int) -> int:
        """What fast nodes of ``total`` bytes now may hold under the host's
        allotment (:meth:`FastLimit.limit`)."""
        return self._fast_limit.limit(
            total, self.allot_fast_bytes, self.plugged_fast_bytes, self.plugged_is_newer
        )

    def receive(self, report_interval_s: float) -> None:
        """Say hello (again, if needed) and take the host's messages.

        The host answers a hello with its own. A host hello that answers none
        of ours means a host daemon that does not know this agent (it
        restarted): the agent says hello again (see :meth:`_host_hello`).
        """
        before = self.allot_fast_bytes
        self._receive(report_interval_s)
        after = self.allot_fast_bytes
        if after is not None and before is not None and after < before:
            self._fit_owed = True

    def _receive(self, report_interval_s: float) -> None:
        if not self.available:
            return
        if not self._hello_sent:
            self._say_hello()
        try:
            data = self._backend.channel_recv()
        except GuestError as err:
            self._channel_failed(err)
            return
        for line in self._reader.feed(data):
            if not line.strip():
                continue  # the newline a peer sends before its hello
            try:
                msg = wire.decode(line)
            except wire.WireError as err:
                self.counters.wire_errors += 1
                log.warning("bad message from host: %s", err)
                continue
            if isinstance(msg, wire.Hello):
                self._host_hello(report_interval_s)
            elif isinstance(msg, wire.Allot):
                self.counters.allots_received += 1
                if msg.fast_bytes != self.allot_fast_bytes:
                    log.info(
                        "host allots %d MiB fast, %d MiB slow",
                        msg.fast_bytes >> 20,
                        msg.slow_bytes >> 20,
                    )
                self.allot_fast_bytes = msg.fast_bytes
                self.plugged_is_newer = False
            elif isinstance(msg, wire.Plugged):
                self.plugged_fast_bytes = msg.fast_bytes
                self.plugged_is_newer = True

    def report_due(self, report_interval_s: float, fits: bool) -> bool:
        """Whether a report goes out now: every ``report_interval_s``, and at
        once when the fast nodes (``fits``) are back under a lowered allotment
        (such a fit report leaves the regular schedule alone)."""
        if not self.available:
            return False
        now = self._clock.monotonic()
        owed = self._fit_owed and fits
        if fits:
            self._fit_owed = False
        if now < self._next_report and not owed:
            return False
        if now >= self._next_report:
            self._next_report = now + report_interval_s
        return True

    def report(
        self,
        nodes: Sequence[NumaNode],
        fast: Collection[int],
        hot_bytes: int,
        pressure: float,
        pages_moved: int,
    ) -> None:
        """Send the next report (sequence numbers from 1 in this process):
        the usage of ``nodes`` (those in ``fast`` as the fast tier), and
        ``hot_bytes`` capped at what they use and at the wire's maximum."""
        usage = tuple(
            wire.NodeUsage(
                n.node,
                "fast" if n.node in fast else "slow",
                n.total_bytes,
                min(n.used_bytes, n.total_bytes),
            )
            for n in nodes[: wire.MAX_NODES]
        )
        used = sum(u.used_bytes for u in usage)
        hot_bytes = min(hot_bytes, used, wire.MAX_BYTES)
        self._seq += 1
        msg = wire.Report(self._seq, usage, hot_bytes, pressure, pages_moved)
        if self._send(msg):
            self.counters.reports_sent += 1

    def _say_hello(self) -> None:
        # The first hello of this process starts with a newline: it ends the
        # line a killed agent may have left unfinished in the host's reader,
        # which would otherwise swallow this hello.
        if self._send(self._hello, newline=not self._hellos):
            self._hello_sent = True
            self._awaiting_answer = True
            self._hellos += 1
            self._hello_s = self._clock.monotonic()

    def _host_hello(self, interval: float) -> None:
        """A host hello: the answer to ours, or a new host daemon asking for one.

        The first host hello after ours is its answer, however late it comes
        (a host that was not running yet, a slow guest). One that comes unasked
        gets a hello back, at most once per ``guest.report_interval_s``. An
        answer never gets one, so the exchange cannot loop; a hello of ours that
        was lost (no answer within ``HELLO_ANSWER_INTERVALS`` report
        intervals) stops waiting for one, so the host's next request works.
        """
        since = self._clock.monotonic() - self._hello_s
        if self._awaiting_answer and since <= HELLO_ANSWER_INTERVALS * interval:
            self._awaiting_answer = False
            return
        self._awaiting_answer = False
        if since < interval:
            return  # said hello moments ago; the host asks again if it must
        log.info("host agent said hello unasked (it restarted): saying hello again")
        self._hello_sent = False  # retried every tick until it goes out
        self._say_hello()

    def _send(self, msg: wire.Message, newline: bool = False) -> bool:
        """Send to the host agent; placement goes on without it if that fails."""
        try:
            self._backend.channel_send(b"\n" * newline + wire.encode(msg))
        except GuestError as err:
            self._channel_failed(err)
            return False
        if self._channel_down:
            log.info("host channel works again")
            self._channel_down = False
        return True

    def _channel_failed(self, err: GuestError) -> None:
        self.counters.channel_errors += 1
        if not self._channel_down:  # log the transition, not every tick
            log.warning("host channel: %s; placing pages without the host", err)
            self._channel_down = True
