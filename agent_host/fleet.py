"""The host daemon's per-VM state: one :class:`Fleet` of :class:`VmState`.

A VM's numbers (allotments, settings, report, last resize) are one column of
the fleet's arrays, so a tick hands them to the vectorised policy without
copying VM by VM; everything else about the VM is its :class:`VmState`. The
fleet alone assigns rows: ``states[r].row == r`` after every :meth:`rebuild`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agent_host.backend import Allotment, DomainInfo, Tier
from agent_host.channel import GuestChannel, GuestReport
from agent_host.config import PolicyConfig
from agent_host.demand import DemandFilter, held_peak
from agent_host.metadata import TieringMetadata
from agent_host.policy import TIERS, PolicyInputs, TierInputs, band_bytes
from hypertier_common.arrays import F64, I64
from hypertier_common.errors import ConfigError

__all__ = ["Fleet", "VmState"]


_NO_LIMIT = -1  # a tier without a limit in the metadata: the device size is the limit


def _ordered(info: DomainInfo) -> tuple[Allotment, Allotment]:
    """The VM's two allotments in the order of :data:`TIERS` (fast, slow)."""
    a, b = info.allotments
    return (a, b) if a.tier is TIERS[0] else (b, a)


@dataclass(eq=False)
class VmState:
    """What the daemon keeps of one VM besides its numbers (rebuilt from the
    domain's metadata after a restart)."""

    vm: str
    meta: TieringMetadata
    channel: GuestChannel
    info: DomainInfo
    row: int = -1  # its column in the fleet's arrays; set by Fleet only
    allot: tuple[Allotment, Allotment] = field(init=False)
    # The (fast, slow) allotment and plugged sizes the guest was last sent;
    # None: send again (a new session, or what was in flight may be lost).
    sent_allot: tuple[int, int] | None = None
    sent_plugged: tuple[int, int] | None = None
    # The channel connection the reader's partial line came from, and when
    # the host last asked a guest that reports without a hello for one.
    channel_connection: int = 0
    hello_asked_s: float = -math.inf
    # When the guest agent was first told of a fast-tier shrink still pending.
    shrink_notice_s: float | None = None
    # The fast memory in use the notice asked the guest to come down to (its
    # node's boot memory + the target then, at most max_step_bytes below what
    # it used): a guest that reports fitting it answered, though the target
    # may have moved lower since (a co-tenant's claim rising step by step).
    notice_goal: int = 0
    # A notice of the fast shrink under way ran out and the guest never
    # reported fitting its goal: the shrink's further steps go without one,
    # until the VM reaches its target (docs/host.md, rule 6). Else a guest that
    # never answers would hold every max_step_bytes step for
    # min_resize_interval_s + shrink_notice_s.
    notice_forfeited: bool = False
    allot_seq: int = 0
    resizes: int = 0
    resize_errors: int = 0
    implausible: int = 0  # reports that claim more than the host sees plugged
    last_implausible: str = ""
    seen_report: GuestReport | None = None
    # The guest's reports as demand; kept across guest sessions: a restarted
    # agent does not shed its peak nor its retracted rises.
    demand: DemandFilter = field(default_factory=DemandFilter)
    # (received_s, used_bytes) of the reports whose used memory may still be
    # the largest within the release window (demand.held_peak).
    used_recent: deque[tuple[float, float]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.allot = _ordered(self.info)

    def set_info(self, info: DomainInfo) -> None:
        self.info = info
        self.allot = _ordered(info)

    def guest_status(self, now: float) -> dict[str, Any]:
        """The guest agent's side of ``status``: channel counters, last report."""
        chan = self.channel
        rep = chan.latest
        return {
            "connected": chan.hello is not None,
            "report_age_s": round(now - rep.received_s, 3) if rep else None,
            "hot_bytes": rep.report.hot_bytes if rep else None,
            "pressure": rep.report.pressure if rep else None,
            "messages": chan.messages,
            "invalid": chan.invalid,
            "rate_limited": chan.rate_limited,
            "lines": chan.lines,
            "blank_lines": chan.blank_lines,
            "bytes_received": chan.bytes_received,
            "bytes_discarded": chan.bytes_discarded,
            "over_budget": chan.over_budget,
            "sessions": chan.sessions,
            "throttled": chan.throttled(now),
            "throttle_count": chan.throttle_count,
            "last_error": chan.last_error,
            "implausible_reports": self.implausible,
            "last_implausible": self.last_implausible,
            "held_hot_bytes": self.demand.held,
            "retracted_rises": self.demand.retracted_total,
        }

    def with_settings(
        self,
        qos_class: str | None,
        reservations: Mapping[Tier, int],
        limits: Mapping[Tier, int],
        classes: Collection[str],
    ) -> TieringMetadata:
        """This VM's metadata with a new class, reservations or limits (bytes).

        Raises:
            ConfigError: an unknown class, or not 0 <= reservation <= limit <=
                device size on a tier.
        """
        if qos_class is not None and qos_class not in classes:
            raise ConfigError(
                f"class {qos_class!r} unknown; choose from {sorted(classes)}"
            )
        tiers = []
        for tier in Tier:
            old = self.meta.tier(tier)
            assert old is not None  # the daemon adopts a VM with both tiers
            allot = self.info.allotment(tier)
            dev_max = allot.max_bytes if allot else 0
            res = reservations.get(tier, old.reservation_bytes)
            lim = limits.get(tier, old.limit_bytes)
            if not 0 <= res <= lim <= dev_max:
                raise ConfigError(
                    f"{self.vm} {tier.value}: need 0 <= reservation ({res}) <= "
                    f"limit ({lim}) <= device size ({dev_max})"
                )
            tiers.append(replace(old, reservation_bytes=res, limit_bytes=lim))
        return replace(
            self.meta, qos_class=qos_class or self.meta.qos_class, tiers=tuple(tiers)
        )


class Fleet:
    """Every tiered VM the daemon manages, and their numbers as arrays.

    Arrays of shape (2, n) have the tiers of :data:`TIERS` on axis 0; (n,)
    arrays are per VM. Adding or removing a VM leaves the arrays as they are
    until :meth:`rebuild`, which the daemon calls before it reads them again.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, VmState] = {}
        self.states: list[VmState] = []
        self._alloc(0)

    def _alloc(self, n: int) -> None:
        self.weight: F64 = np.ones(n)
        self.requested: I64 = np.zeros((2, n), np.int64)
        self.current: I64 = np.zeros((2, n), np.int64)
        self.block: I64 = np.ones((2, n), np.int64)
        self.boot: I64 = np.zeros((2, n), np.int64)  # host-known, from the domain
        self.max: I64 = np.zeros((2, n), np.int64)  # the device size
        self.meta_limit: I64 = np.full((2, n), _NO_LIMIT, np.int64)
        self.limit: I64 = np.zeros((2, n), np.int64)
        self.reservation: I64 = np.zeros((2, n), np.int64)
        self.last_resize_s: F64 = np.full((2, n), -math.inf)
        self.received_s: F64 = np.full(n, -math.inf)
        self.hot: F64 = np.full(n, np.nan)
        self.used: F64 = np.full(n, np.nan)
        # The policy's latest targets; (2, 0) until a tick plans for these rows.
        self.target: I64 = np.zeros((2, 0), np.int64)

    # -- membership -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, vm: str) -> bool:
        return vm in self._by_name

    def __iter__(self) -> Iterator[VmState]:
        return iter(self.states)

    def __getitem__(self, vm: str) -> VmState:
        return self._by_name[vm]

    def get(self, vm: str) -> VmState | None:
        return self._by_name.get(vm)

    def names(self) -> list[str]:
        return list(self._by_name)

    def add(self, st: VmState) -> None:
        self._by_name[st.vm] = st

    def remove(self, vm: str) -> bool:
        """Forget ``vm``; True if it was here."""
        return self._by_name.pop(vm, None) is not None

    @property
    def stale(self) -> bool:
        """VMs came or went since the last :meth:`rebuild`."""
        return len(self.states) != len(self._by_name) or any(
            st.vm not in self._by_name for st in self.states
        )

    def rebuild(self, weight: Callable[[VmState], float]) -> None:
        """New arrays for the current VMs (rows in the order they were added).

        What survives a rebuild is kept per VM: its last resize times; settings
        and allotments are loaded again from each VM's metadata and info.
        """
        old_last = self.last_resize_s
        kept = [(st, st.row) for st in self._by_name.values()]
        self.states = [st for st, _ in kept]
        self._alloc(len(self.states))
        for row, (st, old_row) in enumerate(kept):
            if 0 <= old_row < old_last.shape[1]:
                self.last_resize_s[:, row] = old_last[:, old_row]
            st.row = row
            self.load_settings(st, weight(st))
        self.load_allotments()

    # -- loading --------------------------------------------------------------

    def load_allotments(self) -> None:
        """Every VM's allotments, as its info last said, into the arrays at once."""
        n = len(self.states)
        if n == 0:
            return
        rows = np.array(
            [
                (
                    a.requested_bytes,
                    a.current_bytes,
                    a.block_bytes,
                    a.boot_bytes,
                    a.max_bytes,
                )
                for st in self.states
                for a in st.allot
            ],
            dtype=np.int64,
        ).reshape(n, 2, 5)
        self.requested[:] = rows[:, :, 0].T
        self.current[:] = rows[:, :, 1].T
        self.block[:] = rows[:, :, 2].T
        self.boot[:] = rows[:, :, 3].T
        self.max[:] = rows[:, :, 4].T
        self._derive_limits()

    def load_settings(self, st: VmState, weight: float) -> None:
        """``st``'s class weight, reservations and limits (from its metadata)."""
        r = st.row
        self.weight[r] = weight
        self.meta_limit[:, r] = _NO_LIMIT
        self.reservation[:, r] = 0
        for t in st.meta.tiers:
            k = TIERS.index(t.tier)
            self.reservation[k, r] = t.reservation_bytes
            self.meta_limit[k, r] = t.limit_bytes
        self.max[:, r] = [a.max_bytes for a in st.allot]
        self._derive_limits()

    def _derive_limits(self) -> None:
        self.limit[:] = np.where(
            self.meta_limit < 0, self.max, np.minimum(self.meta_limit, self.max)
        )

    # -- per-VM views ---------------------------------------------------------

    def limit_of(self, st: VmState, tier: Tier) -> int:
        return int(self.limit[TIERS.index(tier), st.row])

    def reservation_of(self, st: VmState, tier: Tier) -> int:
        return int(self.reservation[TIERS.index(tier), st.row])

    def policy_inputs(
        self,
        now: float,
        report_timeout_s: float,
        fast_capacity_bytes: int,
        slow_capacity_bytes: int,
    ) -> PolicyInputs:
        """What :func:`agent_host.policy.plan` needs, as copies of the arrays.

        Limits are rounded down and reservations up to whole blocks (a
        reservation never above its limit); reports older than
        ``report_timeout_s`` count as none (NaN).
        """
        fresh = self.received_s >= now - report_timeout_s
        nan = np.full(len(self.states), np.nan)

        def tier(k: int) -> TierInputs:
            block = self.block[k]
            limit = self.limit[k] // block * block
            res = np.minimum(-(-self.reservation[k] // block) * block, limit)
            return TierInputs(
                requested=self.requested[k].copy(),
                current=self.current[k].copy(),
                reservation=res,
                limit=limit,
                block=block.copy(),
                last_resize_s=self.last_resize_s[k].copy(),
                boot=self.boot[k].copy(),
            )

        return PolicyInputs(
            now_s=now,
            weight=self.weight.copy(),
            hot_bytes=np.where(fresh, self.hot, nan),
            used_bytes=np.where(fresh, self.used, nan),
            fast=tier(0),
            slow=tier(1),
            fast_capacity_bytes=fast_capacity_bytes,
            slow_capacity_bytes=slow_capacity_bytes,
        )

    def track_shrink_notices(
        self, target: I64, now: float, interval_s: float, step_bytes: int
    ) -> None:
        """Start the notice of each fast shrink the guest has not heard of yet.

        A fast tier that is not shrinking while its last resize is
        ``interval_s`` (``policy.min_resize_interval_s``) or more ago has
        reached its target: a forfeited notice is restored. Within the
        interval the shrink may only be paused between two steps.
        """
        shrinking = (target[0] < self.requested[0]).tolist()
        due = (now - self.last_resize_s[0] >= interval_s).tolist()
        for st, shrink, over in zip(self.states, shrinking, due, strict=True):
            if not shrink:
                st.shrink_notice_s = None
                st.notice_forfeited = st.notice_forfeited and not over
            elif st.shrink_notice_s is None and st.channel.hello is not None:
                st.shrink_notice_s = now  # the Allot goes out at the end of this tick
                # what the guest uses, at most what the host has plugged (a
                # report may claim a block more: the goal would never be met,
                # nor the notice forfeited)
                rep, r = st.channel.latest, st.row
                boot = int(self.boot[0, r])
                used = int(max(self.requested[0, r], self.current[0, r])) + boot
                if rep is not None:
                    used = min(used, rep.fast_used_bytes)
                st.notice_goal = max(int(target[0, r]) + boot, used - step_bytes)

    def shrink_due(
        self, st: VmState, new: int, now: float, notice_s: float, started_s: float
    ) -> bool:
        """May the fast tier of ``st`` shrink to ``new`` bytes now?

        A guest with an agent is told first (the Allot), so it demotes its
        coldest pages itself instead of leaving the choice to the unplug path.
        The host does not wait on the guest: the shrink goes ahead once the
        guest reports that its fast node fits, or ``notice_s``
        (``policy.shrink_notice_s``) after the notice, whichever comes first;
        a notice that runs out before the guest reported fitting the goal it
        announced (``VmState.notice_goal``) forfeits those of the shrink's
        further steps (``VmState.notice_forfeited``). Guests without an agent
        do not wait, once the daemon has run ``notice_s`` since ``started_s``:
        before, an agent may not have answered its hello yet, and may be
        demoting on an earlier daemon's notice.
        """
        if st.channel.hello is None and now - started_s < notice_s:
            return False
        since = st.shrink_notice_s
        if since is None or st.notice_forfeited:
            return True
        rep = st.channel.latest
        if rep is not None and rep.received_s <= since:
            rep = None  # from before the notice
        if now - since >= notice_s:
            st.notice_forfeited = rep is None or rep.fast_used_bytes > st.notice_goal
            return True
        boot = int(self.boot[0, st.row])
        return rep is not None and rep.fast_used_bytes <= new + boot

    def store_report(self, st: VmState, policy: PolicyConfig) -> str:
        """Take ``st``'s latest guest report into the arrays; say why it is
        implausible ("" if it is not).

        Its hot set becomes the VM's demand through the VM's
        :class:`~agent_host.demand.DemandFilter`: a change within the band or
        :data:`~agent_host.demand.DEMAND_DEADBAND` of the demand is noise, a
        fall counts once it has lasted ``policy.demand_release_s``, a rise at
        once unless the VM lately gave back claims that did not last two such
        windows (then once it has lasted its confirmation time). Each shrink
        of the others costs them demotions, so a guest whose claim rises and
        falls must not make them shrink and grow on every turn.

        A report that claims more than the host provisioned forfeits its demand
        (hot set 0, a fall like any other): the VM keeps its floors (its used
        memory, capped by what is plugged) and shrinks toward them when others
        claim the memory. It is not rejected, or it would count as silent,
        which keeps memory.
        """
        r = st.row
        rep = st.channel.latest
        st.seen_report = rep
        if rep is None:
            self.received_s[r] = -math.inf
            return ""
        self.received_s[r] = rep.received_s
        why = self._implausible(rep, r)
        # a flagged report's demand is none; it never enters the window
        hot = 0.0 if why else float(rep.report.hot_bytes)
        band = float(band_bytes(self.limit[:1, r], self.block[:1, r], policy)[0])
        self.hot[r] = st.demand.update(
            rep.received_s, hot, band, policy.demand_release_s
        )
        # a fall of used memory, like one of demand, counts once it has lasted
        # the window: a guest swinging it report by report moved its floors
        # and made its co-tenants resize (14 / 19 times in 30 min, against 5)
        self.used[r] = held_peak(
            st.used_recent, rep.received_s, rep.used_bytes, policy.demand_release_s
        )
        return why

    def _implausible(self, rep: GuestReport, r: int) -> str:
        """Why a report contradicts what the host sees plugged ("" if it does not).

        A guest node holds its boot memory plus what is plugged; while a resize
        is under way it may be anywhere between the old and the new size.
        """
        for k, tier in enumerate(t.value for t in TIERS):
            seen = int(
                max(self.requested[k, r], self.current[k, r])
                + self.boot[k, r]
                + self.block[k, r]
            )
            total = rep.node_total_bytes(tier)
            if total > seen:
                return f"{tier} node total {total >> 20} MiB > {seen >> 20} MiB plugged"
        if rep.report.hot_bytes > rep.used_bytes:
            return (
                f"hot set {rep.report.hot_bytes >> 20} MiB > "
                f"used {rep.used_bytes >> 20} MiB"
            )
        return ""

    def tier_status(
        self, st: VmState, shares: tuple[I64, I64] | None, now: float
    ) -> dict[str, Any]:
        """``st``'s tiers as ``status`` reports them (``shares``: the policy's
        last, None before it ran). ``unplug_pending_s``: how long ago the host
        asked for the size the guest has not come down to yet (None: none
        pending). A guest kernel may refuse an unplug (pages it cannot move):
        the memory stays counted as that VM's (docs/host.md, "Trust model")."""
        r = st.row
        planned = r < self.target.shape[1]
        shared = shares is not None and r < shares[0].shape[0]
        pending = (self.current[:, r] > self.requested[:, r]).tolist()
        since = (now - self.last_resize_s[:, r]).round(3).tolist()
        return {
            tier.value: {
                "requested_bytes": int(self.requested[k, r]),
                "current_bytes": int(self.current[k, r]),
                "target_bytes": int(self.target[k, r]) if planned else None,
                "share_bytes": int(shares[k][r]) if shares and shared else None,
                "boot_bytes": int(self.boot[k, r]),
                "reservation_bytes": int(self.reservation[k, r]),
                "limit_bytes": int(self.limit[k, r]),
                "host_nodes": list(st.allot[k].host_nodes),
                "unplug_pending_s": (
                    since[k] if pending[k] and math.isfinite(since[k]) else None
                ),
            }
            for k, tier in enumerate(TIERS)
        }

    def limits_by_name(self, st: VmState) -> dict[str, int]:
        """``st``'s limits as the guest channel checks reports against them."""
        return {t.value: int(self.limit[k, st.row]) for k, t in enumerate(TIERS)}
