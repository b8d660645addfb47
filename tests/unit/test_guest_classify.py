"""classify: range binning, decay, split/merge, hot-set selection with hysteresis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_guest.backend import Vma
from agent_guest.classify import RangeTable
from agent_guest.config import ClassifyConfig
from agent_guest.selection import coverage_bytes, select_hot

MiB = 1 << 20
BASE = 0x7F0000000000


def _table(size: int = 64 * MiB, **kw: float) -> RangeTable:
    params = ClassifyConfig(**kw)  # type: ignore[arg-type]
    t = RangeTable(params)
    t.set_vmas([Vma(BASE, BASE + size, "rw-p")], max_ranges=1)
    return t


def _addrs(lo: int, hi: int, n: int, seed: int = 0) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    return (BASE + rng.integers(lo, hi, n)).astype(np.uint64)


def _reused(t: RangeTable) -> RangeTable:
    """Give every range samples in each of the last 8 epochs."""
    t.seen = np.full(len(t), 0xFF, np.uint8)
    return t


def test_samples_outside_every_range_are_ignored() -> None:
    t = _table()
    addr = np.array([BASE - 1, BASE + 64 * MiB, BASE], np.uint64)
    assert t.add_samples(addr) == 1


def test_counts_decay_each_epoch() -> None:
    t = _table(decay=0.5, split_min_samples=1e9)
    t.add_samples(_addrs(0, 64 * MiB, 100))
    t.end_epoch()
    t.end_epoch()
    assert t.count.sum() == pytest.approx(50.0)


def test_range_splits_where_one_half_is_clearly_hotter() -> None:
    t = _table()
    t.add_samples(_addrs(0, 32 * MiB, 400))
    t.add_samples(_addrs(32 * MiB, 64 * MiB, 10, seed=1))
    t.end_epoch()
    assert len(t) == 2
    assert t.density[0] > 10 * t.density[1]
    assert t.end[0] == t.start[1]


def test_range_with_balanced_halves_does_not_split() -> None:
    t = _table()
    t.add_samples(_addrs(0, 64 * MiB, 400))
    t.end_epoch()
    assert len(t) == 1


def test_repeated_epochs_isolate_a_small_hot_region() -> None:
    t = _table(size=1024 * MiB)
    for e in range(12):
        t.add_samples(_addrs(512 * MiB, 520 * MiB, 2000, seed=e))
        t.add_samples(_addrs(0, 1024 * MiB, 200, seed=100 + e))
        t.end_epoch()
    hottest = int(np.argmax(t.density))
    assert BASE + 500 * MiB <= int(t.start[hottest])
    assert int(t.end[hottest]) <= BASE + 532 * MiB


def test_neighbours_that_agree_merge_while_half_the_budget_is_used() -> None:
    t = RangeTable(ClassifyConfig(max_ranges=16, split_min_samples=1e9))
    t.set_vmas([Vma(BASE, BASE + 64 * MiB, "rw-p")])
    assert len(t) == 8  # half the budget: the rest is room for splits
    for _ in range(6):
        t.end_epoch()  # no samples: every neighbour agrees (cold)
    assert len(t) == 4  # one round of pairs, then below half the budget
    assert (int(t.start[0]), int(t.end[-1])) == (BASE, BASE + 64 * MiB)
    assert (t.start[1:] == t.end[:-1]).all()


def test_ranges_stay_small_while_the_budget_allows() -> None:
    """Large merged ranges would hide scans from the reuse test."""
    t = RangeTable(ClassifyConfig(max_ranges=2048, split_min_samples=1e9))
    t.set_vmas([Vma(BASE, BASE + 64 * MiB, "rw-p")])
    assert len(t) == 32  # 2 MiB each (min_range_bytes)
    for _ in range(6):
        t.end_epoch()
    assert len(t) == 32


def test_ranges_never_exceed_max_ranges() -> None:
    t = _table(size=1024 * MiB, max_ranges=16)
    for e in range(20):
        t.add_samples(_addrs(0, 1024 * MiB, 5000, seed=e) & ~np.uint64(0xFFFFF))
        t.add_samples(_addrs(0, 4 * MiB, 5000, seed=50 + e))
        t.end_epoch()
        assert len(t) <= 16


def test_a_1tib_address_space_is_covered_by_at_most_max_ranges() -> None:
    t = RangeTable(ClassifyConfig(max_ranges=2048))
    vmas = [
        Vma(BASE + i * (1 << 36), BASE + (i + 1) * (1 << 36), "rw-p") for i in range(16)
    ]
    t.set_vmas(vmas)
    assert len(t) <= 2048
    assert int((t.end - t.start).sum()) == 1 << 40


def test_selection_fills_capacity_with_the_densest_ranges() -> None:
    t = RangeTable(ClassifyConfig())
    t.set_vmas([Vma(BASE, BASE + 8 * MiB * 4, "rw-p")], max_ranges=8)
    t.count = np.array([10.0, 40.0, 20.0, 30.0])
    t.mass = t.count.copy()
    _reused(t)
    sel = select_hot({1: t}, capacity_bytes=16 * MiB, hysteresis=0.0)
    assert sel.hot[1].tolist() == [False, True, False, True]
    assert sel.hot_bytes == 16 * MiB
    # 90 % of the samples are in the three densest ranges.
    assert sel.demand_bytes == 24 * MiB


def test_demand_is_not_capped_by_the_fast_tier() -> None:
    """A 128 MiB hot set sampled sparsely (a sample per range every other epoch,
    so no range shows reuse) is demanded whole, with room for 16 MiB only."""
    t = _table(size=256 * MiB, max_ranges=128)
    for e in range(40):
        hot = _addrs(0, 128 * MiB, 36, seed=e)
        cold = _addrs(128 * MiB, 256 * MiB, 4, seed=100 + e)
        t.add_samples(np.concatenate([hot, cold]))
        t.end_epoch()
    sel = select_hot({1: t}, capacity_bytes=16 * MiB, hysteresis=0.0)
    assert sel.hot_bytes <= 16 * MiB
    assert sel.demand_bytes == pytest.approx(128 * MiB, rel=0.15)


@given(
    mass=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=50),
    sizes=st.lists(st.integers(1, 1 << 30), min_size=50, max_size=50),
    lo=st.floats(0.01, 1.0),
    hi=st.floats(0.01, 1.0),
)
def test_coverage_bytes_is_bounded_and_monotone(
    mass: list[float], sizes: list[int], lo: float, hi: float
) -> None:
    m = np.array(mass)
    sz = np.array(sizes[: len(mass)], dtype=np.float64)
    lo, hi = min(lo, hi), max(lo, hi)
    a, b = coverage_bytes(m, sz, lo), coverage_bytes(m, sz, hi)
    assert 0 <= a <= b <= sz.sum() + 1
    if m.sum() == 0:
        assert b == 0


def test_ranges_without_samples_are_never_hot() -> None:
    t = RangeTable(ClassifyConfig())
    t.set_vmas([Vma(BASE, BASE + 16 * MiB, "rw-p")], max_ranges=2)
    sel = select_hot({1: t}, capacity_bytes=1 << 40, hysteresis=0.0)
    assert not sel.hot[1].any()


def test_hysteresis_keeps_the_incumbent_against_a_slightly_hotter_range() -> None:
    t = RangeTable(ClassifyConfig())
    t.set_vmas([Vma(BASE, BASE + 16 * MiB, "rw-p")], max_ranges=4)
    t.count = t.mass = np.array([100.0, 110.0])  # on both time scales
    t.hot = np.array([True, False])
    _reused(t)
    sel = select_hot({1: t}, capacity_bytes=8 * MiB, hysteresis=0.25)
    assert sel.hot[1].tolist() == [True, False]
    t.count = t.mass = np.array([100.0, 200.0])
    sel = select_hot({1: t}, capacity_bytes=8 * MiB, hysteresis=0.25)
    assert sel.hot[1].tolist() == [False, True]


def test_selection_ranks_across_processes() -> None:
    a, b = RangeTable(ClassifyConfig()), RangeTable(ClassifyConfig())
    a.set_vmas([Vma(BASE, BASE + 8 * MiB, "rw-p")], max_ranges=1)
    b.set_vmas([Vma(BASE, BASE + 8 * MiB, "rw-p")], max_ranges=1)
    a.count = a.mass = np.array([5.0])
    b.count = b.mass = np.array([50.0])
    _reused(a), _reused(b)
    sel = select_hot({1: a, 2: b}, capacity_bytes=8 * MiB, hysteresis=0.0)
    assert (sel.hot[1].tolist(), sel.hot[2].tolist()) == ([False], [True])


def test_a_sweeping_front_is_not_promoted() -> None:
    """Hot this epoch, cold over the longer window: a front of activity moving
    through memory (inserts, a log) is not worth moving pages for."""
    t = RangeTable(ClassifyConfig())
    t.set_vmas([Vma(BASE, BASE + 16 * MiB, "rw-p")], max_ranges=4)
    t.count = np.array([200.0, 300.0])  # the front is in range 1 right now
    t.mass = np.array([400.0, 60.0])  # range 0 is hot over the longer window
    _reused(t)
    sel = select_hot({1: t}, capacity_bytes=8 * MiB, hysteresis=0.0)
    assert sel.hot[1].tolist() == [True, False]
    res = t.residual()
    assert res.hot[1] < res.cold[1]  # promotion sees the lesser estimate
    assert res.hot[0] < res.cold[0]
    assert res.hot[0] > res.hot[1]


def test_new_vmas_keep_the_density_of_surviving_ranges() -> None:
    t = _table(size=16 * MiB)
    t.count = np.array([160.0])
    t.set_vmas(
        [
            Vma(BASE, BASE + 16 * MiB, "rw-p"),
            Vma(BASE + 32 * MiB, BASE + 48 * MiB, "rw-p"),
        ],
        max_ranges=2,
    )
    assert t.count.tolist() == pytest.approx([160.0, 0.0])


def test_an_individually_hot_page_in_a_cold_range_is_tracked() -> None:
    t = _table(size=64 * MiB, max_tracked_pages=4)
    page = BASE + 40 * MiB
    for epoch in range(3):
        t.add_samples(np.full(20, page + 64, np.uint64))
        t.add_samples(_addrs(0, 64 * MiB, 50, seed=epoch))
        t.end_epoch()
    addr, count = t.hot_pages()
    assert addr.tolist() == [page]
    assert count[0] >= 20


def test_one_pass_of_a_scan_is_not_hot() -> None:
    """A sequential scan samples each page (and 2 MiB range) in one epoch only."""
    t = _table(size=64 * MiB, max_tracked_pages=4096)
    t.set_vmas([Vma(BASE, BASE + 64 * MiB, "rw-p")], max_ranges=32)
    hot = BASE + np.arange(0, 4 * MiB, 4096, dtype=np.uint64)
    for epoch in range(8):
        lo = 8 * MiB + epoch * 6 * MiB  # the scan moves 6 MiB an epoch
        scan = BASE + np.arange(lo, lo + 6 * MiB, 4096 // 8, dtype=np.uint64)
        t.add_samples(np.concatenate([scan, np.repeat(hot, 4)]))
        t.end_epoch()
    sel = select_hot({1: t}, capacity_bytes=64 * MiB, hysteresis=0.0)
    ends = (t.end[sel.hot[1]] - np.uint64(BASE)).tolist()
    assert not ends or max(ends) <= 8 * MiB, ends
    pages, _ = t.hot_pages()
    assert ((pages >= BASE) & (pages < BASE + 4 * MiB)).all()
    assert pages.shape[0] == 1024
    # the hot region is selected, page by page, and nothing of the scan
    assert t.pages.hot_addr.tolist() == pages.tolist()
    assert sel.hot_bytes <= 8 * MiB


def test_tracked_pages_are_bounded_and_cooled_by_samples_not_epochs() -> None:
    t = _table(size=64 * MiB, max_tracked_pages=8, page_cooling_samples=1000)
    t.add_samples(_addrs(0, 64 * MiB, 999))
    t.end_epoch()
    assert t.pages.addr.shape[0] == 8
    kept = t.pages.addr.copy()
    for _ in range(6):  # epochs without samples: nothing is forgotten
        t.end_epoch()
    assert t.pages.addr.tolist() == kept.tolist()
    other = BASE + 48 * MiB
    for _ in range(3):  # 1000 samples elsewhere per epoch: one cooling each
        t.add_samples(np.full(1000, other, np.uint64))
        t.end_epoch()
    assert t.pages.addr.tolist() == [other]


def _sampled(
    weights: np.ndarray, samples_per_epoch: int, epochs: int, **kw: float
) -> RangeTable:  # type: ignore[type-arg]
    """One 64 MiB range whose pages draw samples in proportion to ``weights``."""
    kw = {"split_min_samples": 1e9, **kw}
    t = _table(size=64 * MiB, **kw)
    rng = np.random.default_rng(7)
    p = weights / weights.sum()
    for _ in range(epochs):
        page = rng.choice(weights.shape[0], samples_per_epoch, p=p)
        t.add_samples((BASE + page * 4096 + 64).astype(np.uint64))
        t.end_epoch()
    return t


PAGES = (64 * MiB) // 4096


def test_dispersion_is_zero_where_pages_differ_only_by_sampling_noise() -> None:
    """Uniform accesses: a page that drew more samples was lucky, not hot."""
    t = _sampled(np.ones(PAGES), 8000, 8)
    assert len(t) == 1
    assert t.dispersion()[0] < 0.05


def test_dispersion_trusts_own_counts_where_hot_pages_are_scattered() -> None:
    """Power-law popularity over a permuted page order (a graph's vertices):
    ranges cannot separate the hot pages, their own counts can."""
    rank = np.random.default_rng(3).permutation(PAGES) + 1.0
    t = _sampled(rank**-0.8, 8000, 8)
    assert len(t) == 1
    assert t.dispersion()[0] > 0.5


def test_a_full_page_table_does_not_fake_dispersion() -> None:
    """Keeping only the most sampled pages of a uniform range must not read as
    hot pages among cold ones: untracked pages count at the tracking floor."""
    t = _sampled(np.ones(PAGES), 8000, 8, max_tracked_pages=1024)
    assert t.pages.addr.shape[0] == 1024
    assert t.dispersion()[0] < 0.05


@given(
    st.lists(st.integers(0, PAGES - 1), min_size=0, max_size=3000),
    st.integers(1, 5),
)
def test_dispersion_is_a_weight_in_zero_one(pages: list[int], epochs: int) -> None:
    t = _table(size=64 * MiB, max_tracked_pages=256)
    t.set_vmas([Vma(BASE, BASE + 64 * MiB, "rw-p")], max_ranges=16)
    addr = (BASE + np.array(pages, np.int64) * 4096).astype(np.uint64)
    for _ in range(epochs):
        t.add_samples(addr)
        t.end_epoch()
    b = t.dispersion()
    assert b.shape == (len(t),)
    assert np.all((b >= 0.0) & (b <= 1.0))
    assert np.array_equal(t.dispersion(), b)  # cached, and the same


def test_dispersion_follows_the_page_counts_epoch_by_epoch() -> None:
    """The cached weight is recomputed once an epoch changes the counts."""
    t = _sampled(np.ones(PAGES), 8000, 4)
    assert t.dispersion()[0] < 0.05
    hot = (BASE + np.arange(0, PAGES, 16, dtype=np.uint64) * 4096).astype(np.uint64)
    for _ in range(4):  # one page in 16 now draws 8 samples an epoch
        t.add_samples(np.repeat(hot, 8))
        t.end_epoch()
    assert t.dispersion()[0] > 0.5
