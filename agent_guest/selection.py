"""Which memory belongs on the fast tier (pure): the densest ranges and resolved
pages of every target process that fit the fast capacity, and the demand the
guest reports to the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agent_guest.backend import PAGE_SIZE
from agent_guest.classify import RangeTable
from hypertier_common.arrays import F64, BoolArray

__all__ = ["Selection", "coverage_bytes", "select_hot"]


@dataclass(frozen=True, eq=False)
class Selection:
    """Hot ranges chosen this epoch: per pid a bool mask over its table, ordered
    lists for the exchange, and the hot-set size estimate."""

    hot: Mapping[int, BoolArray]
    hot_bytes: int
    demand_bytes: int


def select_hot(
    tables: Mapping[int, RangeTable], capacity_bytes: int, hysteresis: float
) -> Selection:
    """Pick the densest units over all processes that fit ``capacity_bytes``.

    Units are resolved pages (:meth:`RangeTable.resolved`, each with its own
    density) and ranges (the density of their other pages,
    :meth:`RangeTable.residual`), ranked on one scale. Units hot last epoch rank
    with density x (1 + hysteresis), so a newcomer must be clearly hotter to
    displace them (no ping-pong). Units with no samples are never hot, and a
    range not hot yet must show reuse (samples in ``reuse_epochs`` of the last
    ``reuse_window`` epochs) first. Updates each table's ``hot`` mask and
    its pages' hot set. ``demand_bytes`` is what the guest would place on the
    fast tier if it had room (:func:`coverage_bytes` of the long-window sample
    mass), whatever it holds now: the demand reported to the host.
    """
    pids = list(tables)
    if not pids:
        return Selection({}, 0, 0)
    res = [tables[p].resolved() for p in pids]
    resid = [tables[p].residual() for p in pids]
    # A range hot last epoch stays while either time scale says so; a newcomer
    # needs both (Residual).
    r_dens = np.concatenate(
        [
            np.where(tables[p].hot, r.cold, r.hot)
            for p, r in zip(pids, resid, strict=True)
        ]
    )
    r_size = np.concatenate([r.size for r in resid])
    n_ranges = r_dens.shape[0]
    dens = np.concatenate([r_dens, *(r.density for r in res)])
    prev = np.concatenate([*(tables[p].hot for p in pids), *(r.hot for r in res)])
    size = np.concatenate([r_size, np.full(dens.shape[0] - n_ranges, float(PAGE_SIZE))])
    reused = np.concatenate(
        [
            *(tables[p].reused for p in pids),
            np.ones(dens.shape[0] - n_ranges, bool),  # resolved: reused by definition
        ]
    )
    lens = [len(tables[p]) for p in pids]
    plens = [r.addr.shape[0] for r in res]
    owner = np.concatenate(
        [np.repeat(np.arange(len(pids)), lens), np.repeat(np.arange(len(pids)), plens)]
    )
    score = dens * np.where(prev, 1.0 + hysteresis, 1.0)
    sampled = dens > 1e-3
    active = sampled & (prev | reused)
    order = np.argsort(-score, kind="stable")
    order = order[active[order]]
    fits = np.cumsum(size[order]) <= capacity_bytes
    chosen = np.zeros(dens.shape[0], bool)
    chosen[order[fits]] = True
    hot: dict[int, BoolArray] = {}
    c_ranges, c_pages = chosen[:n_ranges], chosen[n_ranges:]
    o_ranges, o_pages = owner[:n_ranges], owner[n_ranges:]
    for k, p in enumerate(pids):
        mask = c_ranges[o_ranges == k]
        t = tables[p]
        t.hot = mask
        t.pages.set_hot(res[k].addr[c_pages[o_pages == k]])
        hot[p] = mask
    mass = np.concatenate([tables[p].mass for p in pids])
    rsize = np.concatenate([tables[p].size_bytes for p in pids])
    coverage = tables[pids[0]].params.demand_coverage
    return Selection(
        hot, int(size[chosen].sum()), coverage_bytes(mass, rsize, coverage)
    )


def coverage_bytes(mass: F64, size: F64, coverage: float) -> int:
    """The least memory that serves ``coverage`` of the sampled accesses: ranges
    by decreasing density until their samples reach that fraction (the last one
    in proportion). Independent of what the fast tier holds now."""
    total = float(mass.sum())
    if total <= 0.0:
        return 0
    order = np.argsort(-(mass / np.maximum(size, 1.0)), kind="stable")
    m, sz = mass[order], size[order]
    cum = np.cumsum(m)
    goal = coverage * total
    k = int(np.searchsorted(cum, goal))  # ranges before k serve less than goal
    k = min(k, m.shape[0] - 1)
    before = float(cum[k - 1]) if k > 0 else 0.0
    part = (goal - before) / float(m[k]) if m[k] > 0 else 0.0
    return int(float(sz[:k].sum()) + min(max(part, 0.0), 1.0) * float(sz[k]))
