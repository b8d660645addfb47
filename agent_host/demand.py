"""What a VM's reported hot sets count for as demand (docs/host.md, "Trust model").

Pure and per VM: :class:`DemandFilter` turns the guest's reports, one at a time,
into the demand the policy sees. Three rules, each against a way a guest (or
its estimate's noise) could make the other VMs shrink and grow for nothing:

- a change within the VM's hysteresis band, or :data:`DEMAND_DEADBAND` of
  the demand, leaves the demand where it was;
- a fall counts once it has lasted ``release_s``: until then the largest hot
  set reported within the window counts;
- a rise counts at once, unless the VM has lately retracted a claim: its
  demand fell (since it last rose, in one step or several, by more than
  ``RETRACT_SHARE`` of where it fell from), giving back memory it had first
  claimed (reported above :data:`DATE_SHARE` of the fall) less than
  ``2 * release_s`` before, i.e. a claim that lasted less than the window the
  host holds it anyway, for which the others shrank and will grow back. Each
  retraction makes the VM's next rises count only once the claim has lasted
  :func:`confirm_s`, ``release_s / 2`` doubling with each up to
  ``8 * release_s``; they are forgotten ``10 * release_s`` after the last.
  Judged on the claims over time, not on single steps: noise, staircases and
  warm-ups within a claim that lasted are none.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["DEMAND_DEADBAND", "DemandFilter", "confirm_s", "held_peak"]

# A change of a VM's demand within this share of it (or within its hysteresis
# band) is noise of the guest's estimate: the demand the policy sees stays.
DEMAND_DEADBAND = 0.05
# Retractions are forgotten this many release windows after the last.
FORGET_WINDOWS = 10
# The longest a rise waits, in release windows, and the retractions that take
# it there (release_s / 2 * 2 ** (5 - 1) = 8 * release_s): more count no more.
MAX_CONFIRM_WINDOWS = 8
MAX_RETRACTIONS = 5
# A claim given back is a retraction if first claimed within this many windows
# and more than this share of the demand (less is the noise of an estimate: a
# spike of +1.5 sd at 10 % (sd) expiring from the fall window).
RETRACT_WINDOWS = 2
RETRACT_SHARE = 0.25
# A claim is dated from when the reports rose above this share of the way from
# where a fall ends to where it began: above the noise of an estimate (within
# 10 % of its level, a phase's reports stay above it for any fall that
# counts), below the midpoint, which such noise crossed.
DATE_SHARE = 0.25


def confirm_s(retractions: int, release_s: float) -> float:
    """How long a rise must last before it counts, after ``retractions``
    recent retractions: none at first, then ``release_s / 2`` doubling with
    each, at most ``8 * release_s``."""
    if retractions <= 0:
        return 0.0
    exponent = min(retractions, MAX_RETRACTIONS) - 2
    return min(release_s * 2.0**exponent, MAX_CONFIRM_WINDOWS * release_s)


@dataclass
class DemandFilter:
    """One VM's reports, one :meth:`update` each, as its demand (the module's
    three rules). Kept across the guest agent's sessions."""

    # (received_s, hot_bytes) of the reports within the release window whose
    # hot set may still be the largest (a falling sequence).
    recent: deque[tuple[float, float]] = field(default_factory=deque)
    # (received_s, hot_bytes) of every report of the last 2 * release_s, and
    # the newest one older than that.
    claims: deque[tuple[float, float]] = field(default_factory=deque)
    # The demand the last report gave, and that report's time.
    demand: float = math.nan
    seen_s: float = -math.inf
    # The hot set the demand is held at while a fall waits out the window, or
    # a rise its confirmation, or a change is noise (None: the report's own).
    held: int | None = None
    # The last hot set that counted as reported (not held back).
    accepted: float = 0.0
    # Since when a rise of the claim waits to count (None: none waits).
    waiting_s: float | None = None
    # The demand a fall under way since the demand last rose fell from, and
    # the time of the report that demand stood at, while the fall is not yet
    # judged (None: none). A fall in steps is judged as a whole, once.
    fall: tuple[float, float] | None = None
    rose: bool = False
    # Retractions (at most MAX_RETRACTIONS; all of them, for status), and when
    # the last was.
    retractions: int = 0
    retracted_total: int = 0
    retracted_s: float = -math.inf

    def active_retractions(self, t: float, release_s: float) -> int:
        """Retractions not yet forgotten at ``t``."""
        if release_s <= 0 or t - self.retracted_s >= FORGET_WINDOWS * release_s:
            return 0
        return self.retractions

    def update(self, t: float, hot: float, band: float, release_s: float) -> float:
        """The demand after a report of ``hot`` received at ``t`` (the same
        report again changes nothing); ``band``: the VM's hysteresis band, a
        change within it (or within :data:`DEMAND_DEADBAND` of the demand)
        does not count."""
        if t <= self.seen_s:
            return self.demand
        self.seen_s = t
        claims = self.claims
        claims.append((t, hot))
        while len(claims) > 1 and claims[1][0] < t - RETRACT_WINDOWS * release_s:
            claims.popleft()
        prev = self.demand
        # the report the demand stands at (a fall gives back what it claimed)
        source_s = self.recent[0][0] if self.recent else t
        noise = max(band, DEMAND_DEADBAND * (0.0 if math.isnan(prev) else prev))
        value = self._confirmed(t, hot, prev, noise, release_s)
        peak = held_peak(self.recent, t, value, release_s)
        if not math.isnan(prev):
            if abs(peak - prev) <= noise:
                peak = prev
            elif peak > prev:
                self.rose, self.fall = True, None
            else:
                if self.rose:  # a fall begins: judged from where it began
                    self.rose, self.fall = False, (prev, source_s)
                self._judge_fall(t, peak, release_s)
        self.held = int(peak) if peak != hot else None
        self.demand = peak
        return peak

    def _judge_fall(self, t: float, demand: float, release_s: float) -> None:
        """Count a retraction if the fall under way, from where it began to
        ``demand``, gives back more than ``RETRACT_SHARE`` of the demand it
        fell from, of memory the demand first rose to less than
        ``RETRACT_WINDOWS`` windows before ``t``. A fall is judged once, when
        it passes that share (a claim given back in steps each under it is
        given back all the same)."""
        if self.fall is None:
            return
        top, top_s = self.fall
        if top - demand <= RETRACT_SHARE * top:
            return
        self.fall = None
        since = self._claimed_since(demand + DATE_SHARE * (top - demand), top_s)
        if since > t - RETRACT_WINDOWS * release_s:
            self.retractions = min(
                self.active_retractions(t, release_s) + 1, MAX_RETRACTIONS
            )
            self.retracted_total += 1
            self.retracted_s = t

    def _claimed_since(self, level: float, source_s: float) -> float:
        """When the claim that the report at ``source_s`` belongs to rose
        above ``level``: the time of the first report after the last one at
        or below ``level`` before it (-inf if it was above ``level`` all
        through the history). The reports, not the demand: a rise that waited
        on its confirmation is claimed from its first report, and a claim
        given up between pulses, which the demand holds through the window,
        is not one claim that lasted."""
        start = -math.inf
        for t, v in reversed(self.claims):
            if t > source_s:
                continue
            if v <= level:
                return start
            start = t
        return -math.inf

    def _confirmed(
        self, t: float, hot: float, prev: float, noise: float, release_s: float
    ) -> float:
        """``hot``, or the last hot set accepted while a rise of the claim
        above the demand waits to count."""
        if math.isnan(prev) or hot <= prev + noise:
            self.waiting_s = None
        else:
            if self.waiting_s is None:
                self.waiting_s = t
            wait = confirm_s(self.active_retractions(t, release_s), release_s)
            if t - self.waiting_s < wait:
                return min(hot, self.accepted)
        self.accepted = hot
        return hot


def held_peak(
    recent: deque[tuple[float, float]], t: float, value: float, window_s: float
) -> float:
    """Add ``value`` seen at ``t`` to ``recent`` (a report seen again, at the
    same ``t``, is not added twice); drop what is older than ``window_s``;
    the largest value left."""
    if not recent or recent[-1][0] < t:
        # a value no larger than a newer one can never be the peak again
        while recent and recent[-1][1] <= value:
            recent.pop()
        recent.append((t, value))
    while recent[0][0] < t - window_s:
        recent.popleft()
    return recent[0][1]
