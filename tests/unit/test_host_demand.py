"""agent_host.demand: a VM's reported hot sets as the demand the policy sees."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import example, given
from hypothesis import strategies as hs

from agent_host.demand import (
    DEMAND_DEADBAND,
    FORGET_WINDOWS,
    RETRACT_SHARE,
    DemandFilter,
    confirm_s,
    held_peak,
)

RELEASE = 30.0
NOISE = 1.0  # the VM's hysteresis band


def _noise(demand: float) -> float:
    """The change of ``demand`` that does not count."""
    return max(NOISE, DEMAND_DEADBAND * demand)


@given(
    reports=hs.lists(
        hs.tuples(hs.floats(0.0, 5.0), hs.floats(0.0, 1e9)), min_size=1, max_size=60
    ),
    window=hs.floats(0.0, 20.0),
)
def test_theheld_peak_is_the_largest_hot_set_reported_within_the_window(
    reports: list[tuple[float, float]], window: float
) -> None:
    """A fall of demand counts only once it has lasted ``window``; a report
    seen again (same time) changes nothing."""
    recent: deque[tuple[float, float]] = deque()
    t, seen = 0.0, []
    for dt, hot in reports:
        t += dt
        got = held_peak(recent, t, hot, window)
        if not seen or seen[-1][0] < t:
            seen.append((t, hot))
        assert got == max(v for s, v in seen if s >= t - window)
        assert held_peak(recent, t, 0.0, window) == got  # the same report again
        assert len(recent) <= len(seen)


def _reference(reports: list[tuple[float, float]]) -> list[float]:
    """The demand without confirmation of rises: the held peak, noise aside."""
    recent: deque[tuple[float, float]] = deque()
    prev, out = math.nan, []
    for t, hot in reports:
        peak = held_peak(recent, t, hot, RELEASE)
        if not math.isnan(prev) and abs(peak - prev) <= _noise(prev):
            peak = prev
        out.append(prev := peak)
    return out


# phases of a workload: (level, length in reports of 5 s)
_PHASES = hs.lists(
    hs.tuples(hs.integers(0, 100), hs.integers(1, 40)), min_size=1, max_size=12
)


def _reports(phases: list[tuple[int, int]]) -> list[tuple[float, float]]:
    levels = [float(level) for level, n in phases for _ in range(n)]
    return [(5.0 * (i + 1), v) for i, v in enumerate(levels)]


@given(phases=_PHASES)
def test_a_vm_whose_rises_last_the_window_is_believed_at_once(
    phases: list[tuple[int, int]],
) -> None:
    """Where no phase that rose ends within ``release_s`` (an honest workload
    whose phases last), the demand is the held peak of its reports: every rise
    counts at once, every fall after the window."""
    phases = [(v, max(n, 7)) for v, n in phases]  # 35 s at least
    reports = _reports(phases)
    f = DemandFilter()
    got = [f.update(t, v, NOISE, RELEASE) for t, v in reports]
    assert got == _reference(reports)
    assert f.retractions == 0


@given(
    phases=_PHASES,
    noise=hs.lists(hs.floats(-0.1, 0.1), min_size=1, max_size=50),
)
def test_noise_within_phases_that_last_is_no_retraction(
    phases: list[tuple[int, int]], noise: list[float]
) -> None:
    """An honest estimate within 10 % of its phase's level, phases of 35 s
    or longer: no fall of its demand counts as a retraction, so its rises
    never wait."""
    phases = [(v, max(n, 7)) for v, n in phases]
    f = DemandFilter()
    for i, (t, v) in enumerate(_reports(phases)):
        f.update(t, v * (1.0 + noise[i % len(noise)]), NOISE, RELEASE)
    assert f.retracted_total == 0


@given(phases=_PHASES, noise=hs.lists(hs.floats(-0.1, 0.1), min_size=1, max_size=50))
# a fall that took 135 s to pass a quarter was dated from the next rise
@example(phases=[(22, 1), (17, 28), (21, 1)], noise=[0.0, 0.0625, 0.0, 0.0625, 0.0])
def test_after_a_retraction_phases_that_last_add_none(
    phases: list[tuple[int, int]], noise: list[float]
) -> None:
    """A VM that once retracted a claim, and then runs phases of 35 s or
    longer (estimates within 10 %): its rises wait, but each claim is dated
    from its first report, not from when its rise counted, so none of its
    falls is one more retraction."""
    f = DemandFilter()
    for t, v in ((5.0, 0.0), (10.0, 1000.0), (15.0, 0.0)):
        f.update(t, v, NOISE, RELEASE)
    f.update(50.0, 0.0, NOISE, RELEASE)  # the 1000 expires from the window
    assert f.retracted_total == 1
    phases = [(v, max(n, 7)) for v, n in phases]
    for i, (t, v) in enumerate(_reports(phases)):
        f.update(50.0 + t, v * (1.0 + noise[i % len(noise)]), NOISE, RELEASE)
    assert f.retracted_total == 1


@given(
    period=hs.integers(2, 200),  # reports of 5 s
    width=hs.integers(1, 2),  # the claim lasts 5-10 s, under release_s / 2
    high=hs.floats(10.0, 1e6),
    low=hs.floats(0.0, 0.5),  # of high
    first=hs.floats(0.0, 1.0),  # the first report, of high
    steps=hs.lists(hs.floats(0.5, 1.0), max_size=3),  # of high, on the way down
)
# a fall under a quarter, then the rest: once, only the first step was judged
@example(period=12, width=1, high=490.0, low=0.13, first=0.13, steps=[0.9])
@example(period=37, width=2, high=10.0, low=0.0, first=0.0, steps=[1.0, 0.5, 1.0])
def test_a_claim_pulsed_again_and_again_counts_once_a_forget_window(
    period: int,
    width: int,
    high: float,
    low: float,
    first: float,
    steps: list[float],
) -> None:
    """A guest that claims ``high`` for a report or two out of ``period``, and
    ``low`` in the others, whatever its first report, makes the demand rise by
    more than a quarter in at most one pulse per ``FORGET_WINDOWS *
    release_s`` (else in every pulse:
    each rise shrinks the others, each fall grows them back; a pulse that
    counts may rise in two steps once the claim has lasted its wait). Coming
    down in steps (a report each) changes nothing, but a claim above ``low``
    that lasts ``release_s / 2`` (the wait after one retraction) may count
    once more in each forget window: at two retractions it waits a window."""
    width = min(width, period - 1)
    steps = steps[: period - 1 - width]
    horizon = 400  # reports: 2000 s
    f = DemandFilter()
    prev = f.update(0.0, first * high, NOISE, RELEASE)
    risen: set[int] = set()  # the pulses in which the demand rose
    for i in range(horizon):
        k = i % period
        if k < width:
            claim = high
        elif k < width + len(steps):
            claim = steps[k - width] * high
        else:
            claim = low * high
        d = f.update(5.0 * (i + 1), claim, NOISE, RELEASE)
        # a rise whose fall back would be a retraction (smaller swings are
        # noise to the rule: docs/host.md, "Trust model", what is left)
        if d - prev > max(_noise(prev), RETRACT_SHARE * d):
            risen.add(i // period)
        prev = d
    rises = len(risen)
    forget = FORGET_WINDOWS * RELEASE
    pulses = math.ceil(horizon / period)
    per_forget = 1 if 5.0 * (width + len(steps)) < confirm_s(1, RELEASE) else 2
    assert rises <= min(pulses, per_forget * (1 + math.ceil(5.0 * horizon / forget)))


@given(
    spikes=hs.lists(hs.tuples(hs.integers(2, 12), hs.floats(1.1, 2.0)), max_size=20),
)
def test_an_estimate_spiking_once_in_a_while_delays_a_real_rise_half_a_window(
    spikes: list[tuple[int, float]],
) -> None:
    """An honest estimate of 100 that spikes for one report now and then
    (here to 110-200, each spike 2-12 reports after the last) costs a real
    rise to 300 at most ``release_s / 2`` of waiting."""
    f = DemandFilter()
    t = 0.0
    f.update(t, 100.0, NOISE, RELEASE)
    for gap, spike in spikes:
        for k in range(gap):
            t += 5.0
            f.update(t, 100.0 * spike if k == gap - 1 else 100.0, NOISE, RELEASE)
    t += 5.0
    f.update(t, 100.0, NOISE, RELEASE)
    start = t + 5.0
    for k in range(10):
        t = start + 5.0 * k
        if f.update(t, 300.0, NOISE, RELEASE) == 300.0:
            break
    assert t - start <= RELEASE / 2


@given(retractions=hs.integers(0, 10**6), release=hs.floats(0.0, 1e4))
def test_the_wait_doubles_from_half_a_window_up_to_eight(
    retractions: int, release: float
) -> None:
    wait = confirm_s(retractions, release)
    if retractions == 0:
        assert wait == 0.0
    else:
        want = min(release / 2 * 2 ** (min(retractions, 10) - 1), 8 * release)
        assert wait == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_a_rise_after_a_pulse_counts_once_it_has_lasted_its_wait() -> None:
    """A pulse (the demand at 100 from 5 s to 60 s, under two windows): the
    next rise waits ``release_s / 2`` (15 s), then counts; a report seen again
    changes nothing. That rise too falls within two windows: a second
    retraction."""
    f = DemandFilter()
    times = [0, 5, 10, 15, 60, 100, 105, 110, 115, 115, 120, 150]
    claims = [10, 100, 100, 10, 10, 100, 100, 100, 100, 100, 10, 10]
    seen = [
        f.update(float(t), float(v), NOISE, RELEASE)
        for t, v in zip(times, claims, strict=True)
    ]
    assert seen == [10, 100, 100, 100, 10, 10, 10, 10, 100, 100, 100, 10]
    assert f.retracted_total == 2
    assert confirm_s(f.active_retractions(150.0, RELEASE), RELEASE) == RELEASE
