"""The host agent's side of each guest agent's session over its channel.

Hellos answered and asked for, reports handed on, allotments and the devices'
plugged sizes sent when they change (docs/wire-protocol.md, "Sessions"); the
bytes themselves go through the backend's channel calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import hypertier_wire as wire
from agent_host.backend import HostBackend
from agent_host.errors import HostError
from agent_host.fleet import Fleet, VmState

__all__ = ["GuestLinks"]

log = logging.getLogger(__name__)


class GuestLinks:
    """The sessions with the guest agents of a :class:`Fleet`'s VMs, on
    ``backend``'s channels; ``hello`` is the host agent's hello. Nothing here
    raises: a channel that fails is logged and tried again next time."""

    def __init__(self, backend: HostBackend, hello: wire.Hello) -> None:
        self._backend = backend
        self._hello = hello

    def read(
        self,
        fleet: Fleet,
        now: float,
        ask_every_s: float,
        store_report: Callable[[VmState], None],
    ) -> None:
        """Feed each guest's bytes to its channel; answer hellos, ask for them,
        and hand a new report to ``store_report``.

        A guest hello starts a session: the host answers with its own hello and
        the current allotment. A guest that reports but has not said hello to
        this daemon (the host restarted) is asked for one with a host hello, at
        most once per ``ask_every_s`` (``policy.report_timeout_s``).
        """
        recv = self._backend.channel_recv
        for st in fleet:
            try:
                data = recv(st.vm)
            except HostError as err:
                log.debug("channel of %s: %s", st.vm, err)
                continue
            if not data:
                continue
            chan = st.channel
            conn = self._backend.channel_connection(st.vm)
            if conn != st.channel_connection:
                st.channel_connection = conn
                chan.reconnected()  # no line continues across connections
                st.sent_allot = st.sent_plugged = None  # in flight, maybe lost
            if chan.feed(data, now, fleet.limits_by_name(st)):
                if chan.sessions > 1:
                    log.info("guest agent of %s said hello again", st.vm)
                self._send(st, self._hello)
                st.sent_allot = st.sent_plugged = None  # the new session's
            elif (
                chan.hello is None
                and chan.latest is not None
                and now - st.hello_asked_s >= ask_every_s
            ):
                st.hello_asked_s = now
                log.info("guest agent of %s reports without hello: asking", st.vm)
                self._send(st, self._hello)
            if chan.latest is not st.seen_report:
                store_report(st)

    def send_allotments(self, fleet: Fleet, discovered_s: float) -> None:
        """Each guest's allotment and its devices' plugged sizes, when changed.

        The plugged sizes (as the last discovery, at ``discovered_s``, read
        them) let the guest agent tell its node's fixed memory from the
        device's part, which only the host knows (docs/wire-protocol.md,
        ``plugged``). The guest pairs the latest with its node's size now, so
        only a size read after the VM's last resize goes out, and one goes out
        after every allotment, even if unchanged: the guest trusts only a
        plugged size newer than the allotment (an allotment that went 256 ->
        512 -> 256 MiB before a discovery saw the grow met the guest's plugged
        size of 256 from before the grow, with its node at the grown size, and
        the grown part was counted as fixed memory).
        """
        if fleet.target.shape[1] != len(fleet.states):
            return  # VMs came or went during this tick; the next one sends
        fast, slow = fleet.target.tolist()
        plugged = fleet.current.T.tolist()
        fresh = (discovered_s > fleet.last_resize_s.max(axis=0)).tolist()
        for st, f, s, (pf, ps), ok in zip(
            fleet.states, fast, slow, plugged, fresh, strict=True
        ):
            if st.channel.hello is None:
                continue
            if (f, s) != st.sent_allot:
                st.allot_seq += 1
                if not self._send(st, wire.Allot(st.allot_seq, f, s)):
                    continue  # not sent (the channel is full): the next tick
                st.sent_allot = (f, s)
                st.sent_plugged = None  # the guest trusts only a size read after
            if ok and (pf, ps) != st.sent_plugged:
                st.allot_seq += 1
                if self._send(st, wire.Plugged(st.allot_seq, pf, ps)):
                    st.sent_plugged = (pf, ps)

    def _send(self, st: VmState, msg: wire.Message) -> bool:
        """Send ``msg`` to ``st``'s guest; False if it could not go out."""
        line = wire.encode(msg)
        if isinstance(msg, wire.Hello):
            # A newline first ends whatever line an earlier host process left
            # unfinished in the guest's reader, so this hello is read whole.
            line = b"\n" + line
        try:
            self._backend.channel_send(st.vm, line)
        except HostError as err:
            log.debug("cannot send to %s: %s", st.vm, err)
            return False
        return True
