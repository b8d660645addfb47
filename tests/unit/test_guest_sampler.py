"""sampler: source selection by capability and period control to a CPU budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_guest.backend import Capability, SampleSource
from agent_guest.sampler import (
    TRUSTED_SAMPLES,
    TRUSTED_STEP,
    RateControl,
    select_source,
)
from hypertier_common.errors import Unsupported

NO_PMU = frozenset({Capability.PAGE_FAULT_SAMPLING, Capability.MOVE_PAGES})


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        pytest.param(
            frozenset({Capability.PEBS, Capability.PAGE_FAULT_SAMPLING}),
            SampleSource.PEBS,
            id="intel",
        ),
        pytest.param(
            frozenset({Capability.IBS, Capability.SOFT_DIRTY_SCAN}),
            SampleSource.IBS,
            id="amd",
        ),
        pytest.param(NO_PMU, SampleSource.PAGE_FAULT, id="no-pmu"),
        pytest.param(
            frozenset({Capability.SOFT_DIRTY_SCAN}),
            SampleSource.SOFT_DIRTY,
            id="soft-dirty",
        ),
    ],
)
def test_auto_picks_the_best_source_offered(
    caps: frozenset[Capability], expected: SampleSource
) -> None:
    assert select_source("auto", caps) is expected


def test_an_explicit_source_that_is_missing_names_the_capability() -> None:
    with pytest.raises(Unsupported, match="capability pebs missing"):
        select_source("pebs", NO_PMU)


def test_no_source_at_all_says_what_to_provide() -> None:
    with pytest.raises(Unsupported, match="perf_event_paranoid"):
        select_source("auto", frozenset({Capability.MOVE_PAGES}))


def _rc(period: int = 1000) -> RateControl:
    return RateControl(4000.0, 0.005, 1, 1_000_000, period)


def test_too_many_samples_lengthen_the_period() -> None:
    assert _rc().update(samples=8000, cpu_s=0.0, wall_s=1.0) == 2000


def test_too_few_samples_shorten_the_period() -> None:
    assert _rc().update(samples=2000, cpu_s=0.0, wall_s=1.0) == 500


def test_cpu_over_budget_lengthens_the_period_even_when_samples_are_few() -> None:
    assert _rc().update(samples=1000, cpu_s=0.01, wall_s=1.0) == 2000


def test_a_thin_window_changes_the_period_at_most_fourfold() -> None:
    # 63 samples in 1 ms: 63,000/s, 16x the aim, from too few samples to trust
    assert _rc().update(samples=TRUSTED_SAMPLES - 1, cpu_s=0.0, wall_s=0.001) == 4000
    assert _rc(4000).update(samples=1, cpu_s=0.0, wall_s=1.0) == 1000


def test_a_window_with_enough_samples_sets_the_period_in_one_step() -> None:
    assert _rc().update(samples=TRUSTED_SAMPLES, cpu_s=0.0, wall_s=0.001) == 16_000
    assert _rc(16_000).update(samples=250, cpu_s=0.0, wall_s=1.0) == 1000


def test_even_a_trusted_step_is_bounded() -> None:
    assert _rc().update(samples=10**9, cpu_s=0.0, wall_s=1.0) == int(
        1000 * TRUSTED_STEP
    )


def test_a_partial_window_only_lengthens_the_period() -> None:
    rc = _rc()
    assert rc.update(samples=10, cpu_s=5.0, wall_s=1.0, partial=True) == 1000
    assert rc.update(samples=400_000, cpu_s=5.0, wall_s=1.0, partial=True) == 100_000


def test_period_stays_within_bounds() -> None:
    rc = RateControl(4000.0, 0.005, 100, 2000, 1000)
    assert rc.update(samples=0, cpu_s=0.0, wall_s=1.0) == 500
    for _ in range(5):
        rc.update(samples=0, cpu_s=0.0, wall_s=1.0)
    assert rc.period == 100


def test_the_start_up_window_does_not_shorten_the_period() -> None:
    from agent_guest.config import SamplerConfig
    from agent_guest.sampler import Sampler
    from emu.backends.guest import EmuGuestBackend
    from emu.machine import World

    w = World(1 << 30, 1 << 31, seed=1)
    w.add_vm("vm", 1, 16 << 20, 64 << 20)
    s = Sampler(EmuGuestBackend(w, "vm"), SamplerConfig(period=1000))
    s.start([1])
    s.adapt(samples=0, cpu_s=10.0, wall_s=1.0)  # start-up cost: ignored
    assert s.control.period == 1000
    s.adapt(samples=0, cpu_s=0.0, wall_s=1.0)
    assert s.control.period == 500
    # the reopened events start with the next window: it is whole
    s.adapt(samples=0, cpu_s=0.0, wall_s=1.0)
    assert s.control.period == 250


def test_an_idle_target_does_not_drive_the_period_below_a_quarter_of_its_need() -> None:
    rc = _rc()
    # busy: 4,000 samples at period 1000 is 4 M events/s, period 1000 is right
    assert rc.update(samples=4000, cpu_s=0.0, wall_s=1.0) == 1000
    for _ in range(10):  # idle: empty windows
        rc.update(samples=0, cpu_s=0.0, wall_s=1.0)
    assert rc.period == 250
    # busy again: 16,000/s at 4x the aim, one trusted step back
    assert rc.update(samples=16_000, cpu_s=0.0, wall_s=1.0) == 1000


def test_with_no_sample_yet_empty_windows_shorten_the_period_to_the_minimum() -> None:
    # a fault source may see nothing at the configured period
    rc = RateControl(4000.0, 0.005, 1, 1_000_000, 1000)
    for _ in range(12):
        rc.update(samples=0, cpu_s=0.0, wall_s=1.0)
    assert rc.period == 1


@settings(max_examples=300, deadline=None)
@given(
    windows=st.lists(
        st.tuples(
            st.integers(0, 10**7),  # samples
            st.floats(0.0, 2.0),  # agent CPU s
            st.floats(0.001, 2.0),  # wall s
            st.booleans(),  # partial
        ),
        min_size=1,
        max_size=30,
    ),
    period=st.integers(1, 1_000_000),
)
def test_every_step_is_bounded_and_a_partial_window_never_shortens(
    windows: list[tuple[int, float, float, bool]], period: int
) -> None:
    rc = RateControl(4000.0, 0.01, 1, 1_000_000, period)
    for samples, cpu_s, wall_s, partial in windows:
        old = rc.period
        new = rc.update(samples, cpu_s, wall_s, partial=partial)
        assert 1 <= new <= 1_000_000
        step = TRUSTED_STEP if samples >= TRUSTED_SAMPLES else 4.0
        assert old / step - 1 <= new <= old * step + 1
        if partial:
            assert new >= old
