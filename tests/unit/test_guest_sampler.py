"""sampler: source selection by capability and period control to a CPU budget."""

from __future__ import annotations

import pytest

from agent_guest.backend import Capability, SampleSource
from agent_guest.sampler import RateControl, select_source
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


def test_one_step_changes_the_period_at_most_fourfold() -> None:
    assert _rc().update(samples=10**9, cpu_s=0.0, wall_s=1.0) == 4000


def test_period_stays_within_bounds() -> None:
    rc = RateControl(4000.0, 0.005, 100, 2000, 1000)
    assert rc.update(samples=0, cpu_s=0.0, wall_s=1.0) == 500
    for _ in range(5):
        rc.update(samples=0, cpu_s=0.0, wall_s=1.0)
    assert rc.period == 100


def test_the_start_up_window_does_not_retune_the_period() -> None:
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
