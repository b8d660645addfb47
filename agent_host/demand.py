"""What a VM's reported hot sets count for as demand (docs/host.md, "Trust model").

Pure and per VM: :class:`DemandFilter` turns the guest's reports, one at a time,
into the demand the policy sees. Three rules, each against a way a guest (or
its estimate's noise) could make the other VMs shrink and grow for nothing:

- a change within ``noise`` (the VM's hysteresis band, or
  :data:`DEMAND_DEADBAND` of the demand) leaves the demand where it was;
- a fall counts once it has lasted ``release_s``: until then the largest hot
  set reported within the window counts;
- a rise counts at once, unless the VM's rises have lately been retracted
  before they had lasted ``release_s`` (a pulse: the others shrank and grew
  back while the VM used the memory for less time than the host held it).
  Then a rise counts once it has lasted :func:`confirm_s`, which doubles with
  each such retraction, up to ``8 * release_s``; a retraction is forgotten
  every ``10 * release_s`` without a new one. A rise retracted before it
  counted costs nobody, so it only keeps the VM's count from being forgotten.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["DEMAND_DEADBAND", "DemandFilter", "confirm_s"]

# A change of a VM's demand within this share of it (or within its hysteresis
# band) is noise of the guest's estimate: the demand the policy sees stays.
DEMAND_DEADBAND = 0.05
# A retraction is forgotten after this many release windows without another.
FORGET_WINDOWS = 10
# The longest a rise waits, in release windows.
MAX_CONFIRM_WINDOWS = 8


def confirm_s(retractions: int, release_s: float) -> float:
    """How long a rise must last before it counts, after ``retractions``
    recent rises that were retracted within ``release_s``: none at first, then
    ``release_s / 2`` doubling with each, at most ``8 * release_s``."""
    if retractions <= 0:
        return 0.0
    return min(release_s * 2.0 ** (retractions - 2), MAX_CONFIRM_WINDOWS * release_s)


@dataclass
class DemandFilter:
    """One VM's reports, one :meth:`update` each, as its demand (the module's
    three rules). Kept across the guest agent's sessions."""

    # (received_s, hot_bytes) of the reports within the release window whose
    # hot set may still be the largest (a falling sequence).
    recent: deque[tuple[float, float]] = field(default_factory=deque)
    # The demand the last report gave, and that report's time.
    demand: float = math.nan
    seen_s: float = -math.inf
    # The hot set the demand is held at while a fall waits out the window, or
    # a rise its confirmation, or a change is noise (None: the report's own).
    held: int | None = None
    # The last hot set that counted as reported (not held).
    accepted: float = 0.0
    # A rise under way: since when, from which demand, and when it counted.
    rise_since: float | None = None
    rise_from: float = 0.0
    rise_counted_s: float | None = None
    # Rises retracted before they had lasted a release window (those still
    # remembered, all of them), and when the last was.
    retractions: int = 0
    retracted_total: int = 0
    retracted_s: float = -math.inf

    def active_retractions(self, t: float, release_s: float) -> int:
        """Retractions not yet forgotten at ``t``."""
        if release_s <= 0 or self.retractions == 0:
            return 0
        forgotten = int((t - self.retracted_s) // (FORGET_WINDOWS * release_s))
        return max(0, self.retractions - forgotten)

    def update(self, t: float, hot: float, noise: float, release_s: float) -> float:
        """The demand after a report of ``hot`` received at ``t`` (the same
        report again changes nothing); ``noise``: the change that does not
        count."""
        if t <= self.seen_s:
            return self.demand
        self.seen_s = t
        prev = self.demand
        value = self._confirmed(t, hot, prev, noise, release_s)
        peak = _held_peak(self.recent, t, value, release_s)
        if not math.isnan(prev) and abs(peak - prev) <= noise:
            peak = prev
        self.held = int(peak) if peak != hot else None
        self.demand = peak
        return peak

    def _confirmed(
        self, t: float, hot: float, prev: float, noise: float, release_s: float
    ) -> float:
        """``hot``, or the last hot set accepted while a rise waits to count."""
        if self.rise_since is not None and hot <= self.rise_from + noise:
            # the rise is over: retracted before it had lasted the window?
            counted = self.rise_counted_s
            if counted is None:  # never counted: keeps the count it waited on
                if self.retractions:
                    since = self.rise_since
                    self.retractions = self.active_retractions(since, release_s)
                    self.retracted_s = t
            elif t - counted < release_s:
                self.retractions = self.active_retractions(t, release_s) + 1
                self.retracted_total += 1
                self.retracted_s = t
            self.rise_since = self.rise_counted_s = None
        elif self.rise_since is None and not math.isnan(prev) and hot > prev + noise:
            self.rise_since, self.rise_from = t, prev
        if self.rise_since is not None and self.rise_counted_s is None:
            wait = confirm_s(self.active_retractions(t, release_s), release_s)
            if t - self.rise_since < wait:
                return min(hot, self.accepted)
            self.rise_counted_s = t
        self.accepted = hot
        return hot


def _held_peak(
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
