"""Tier sizing: class-weighted fair fast tier; overcommittable slow tier (pure).

Input is one :class:`PolicyInputs` (numpy arrays, one entry per VM); output the
target allotment of each VM per tier. Vectorised, so 1000 VMs take well under a
millisecond. docs/host.md states the rules and the properties they guarantee
(tested with hypothesis in tests/unit/test_host_policy_properties.py):

1. never above the limit; never below the reservation;
2. **share**: each VM's class-weighted share of the fast capacity is what
   weighted max-min fairness gives it when every VM wants its whole limit
   (:func:`fair_split` with floors = reservations, ceilings = limits). Nothing a
   guest says can raise a VM's floor above its share;
3. **floors**: a VM keeps what it needs to stay alive: the part of its used
   memory (plus a margin) that its slow tier, even at its limit, could not hold,
   capped by its share; a VM without a fresh report keeps its current allotment
   up to its share. Guest-reported usage is first capped by what the host sees
   plugged, so it cannot be inflated;
4. **demand**: the guest's hot set (what it would place on the fast tier if it
   had room) x (1 + headroom), less the fast node's boot memory; without a
   report, what it has now. Targets are the weighted max-min fair split of the
   capacity between floors and demands: with every VM demanding more than its
   share, each gets exactly its share; a VM demanding less gets its demand and
   the rest goes to the others. Capacity nobody demands stays with the VMs that
   hold it (a shrink costs the guest demotions and frees memory for no one);
5. **change limits**: a shrink is held while smaller than the VM's band
   (max(block, min(``hysteresis_bytes``, ``hysteresis_ratio`` x the tier's
   limit))) unless another VM waits for the memory; growth goes by whole
   blocks; no change comes sooner than ``min_resize_interval_s`` after the last
   one, and each is cut to ``max_step_bytes``. So hysteresis delays a
   rebalancing, never freezes it. Restoring a floor bypasses all of
   this. Growth never exceeds memory that is free now (a shrinking VM's
   ``current`` counts until its guest has unplugged); floors are served first.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent_host.backend import HostNode, Tier
from agent_host.config import Config, PolicyConfig
from hypertier_common.arrays import F64, I64, BoolArray
from hypertier_common.errors import ConfigError

__all__ = [
    "TIERS",
    "PolicyInputs",
    "PolicyResult",
    "Resize",
    "Step",
    "TierInputs",
    "TierResult",
    "band_bytes",
    "fair_split",
    "host_capacity",
    "order_resizes",
    "plan",
]


@dataclass(frozen=True)
class TierInputs:
    """One tier of every VM; arrays of bytes, shape (n,).

    ``boot`` is the guest node's fixed memory beside the allotment, as the host
    knows it (the domain's NUMA cell), never as a guest says it.
    """

    requested: I64
    current: I64
    reservation: I64
    limit: I64
    block: I64
    last_resize_s: F64  # -inf: never resized by us
    boot: I64 | None = None

    def boot_bytes(self) -> F64:
        if self.boot is None:
            return np.zeros(self.requested.shape[0])
        return self.boot.astype(np.float64)


@dataclass(frozen=True)
class PolicyInputs:
    """Everything the policy knows about ``n`` VMs at time ``now_s``.

    Guest-report arrays hold NaN where a VM has no fresh validated report.
    ``used_bytes`` is the guest's used memory over all its nodes, boot memory
    included; ``hot_bytes`` its demand for fast memory (docs/wire-protocol.md).
    Both are claims: the policy caps them by what the host sees plugged.
    """

    now_s: float
    weight: F64
    hot_bytes: F64
    used_bytes: F64
    fast: TierInputs
    slow: TierInputs
    fast_capacity_bytes: int
    slow_capacity_bytes: int

    def __len__(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class TierResult:
    """Per-VM share, floor, demand and target (bytes) of one tier."""

    share: I64
    floor: I64
    want: I64
    target: I64
    overcommitted: bool  # the floors alone exceed the tier's capacity


@dataclass(frozen=True)
class PolicyResult:
    fast: TierResult
    slow: TierResult


def fair_split(lo: F64, hi: F64, weight: F64, capacity: float) -> F64:
    """Weighted max-min fair split: ``clip(weight x level, lo, hi)`` summing to
    ``capacity``.

    ``level`` is found exactly (the sum is piecewise linear in it). If even the
    ``lo`` values exceed ``capacity`` they are returned (callers report
    overcommit); if the ``hi`` values fit, they are returned. Needs lo <= hi and
    weight > 0. O(n log n).
    """
    hi = np.maximum(hi, lo)
    if float(lo.sum()) >= capacity:
        return lo.copy()
    if float(hi.sum()) <= capacity:
        return hi.copy()
    w = np.maximum(weight, 1e-12)
    lo_at, hi_at = lo / w, hi / w  # levels where a VM leaves its floor / hits hi
    lo_order, hi_order = np.argsort(lo_at), np.argsort(hi_at)
    lo_sorted, hi_sorted = lo_at[lo_order], hi_at[hi_order]
    cum_lo = np.concatenate(([0.0], np.cumsum(lo[lo_order])))
    cum_hi = np.concatenate(([0.0], np.cumsum(hi[hi_order])))
    cum_wlo = np.concatenate(([0.0], np.cumsum(w[lo_order])))
    cum_whi = np.concatenate(([0.0], np.cumsum(w[hi_order])))
    levels = np.unique(np.concatenate((lo_at, hi_at)))
    a = np.searchsorted(lo_sorted, levels, side="right")  # left their floor
    b = np.searchsorted(hi_sorted, levels, side="right")  # at their ceiling
    active_w = cum_wlo[a] - cum_whi[b]
    fixed = (cum_lo[-1] - cum_lo[a]) + cum_hi[b]
    total = fixed + levels * active_w
    k = int(np.searchsorted(total, capacity, side="right")) - 1
    k = max(k, 0)
    level = float(levels[k])
    if active_w[k] > 0:
        level += (capacity - float(total[k])) / float(active_w[k])
    out: F64 = np.clip(w * level, lo, hi)
    return out


def band_bytes(limit: I64, block: I64, cfg: PolicyConfig) -> F64:
    """The hysteresis band of VMs with these limits and blocks on a tier: at
    least a block, at most ``hysteresis_bytes``, else ``hysteresis_ratio`` x
    the limit."""
    scaled = np.minimum(
        float(cfg.hysteresis_bytes), cfg.hysteresis_ratio * limit.astype(float)
    )
    out: F64 = np.maximum(block.astype(np.float64), scaled)
    return out


def _limit_changes(
    tier: TierInputs,
    floor: I64,
    target: F64,
    capacity: float,
    now_s: float,
    cfg: PolicyConfig,
) -> I64:
    """Hysteresis, the resize interval, the step limit and free capacity."""
    req = tier.requested.astype(np.float64)
    block = tier.block.astype(np.float64)
    limit = tier.limit.astype(np.float64)
    target = np.floor(target / block) * block
    forced = (req < floor) | (req > limit)
    delta = target - req
    band = band_bytes(tier.limit, tier.block, cfg)
    due = (now_s - tier.last_resize_s) >= cfg.min_resize_interval_s
    # Growth is cheap (a plug, no demotions): any whole block. A shrink costs
    # the guest demotions: it waits for the band, unless another VM waits.
    grow = due & (delta >= block)
    shrink = due & (delta <= -band)
    new, growing, cut = _fit(
        tier, floor, req, target, forced, grow | shrink, capacity, cfg
    )
    if cut:
        # A VM waits for memory that others hold by a change below their band:
        # they give it up now (hysteresis delays a rebalancing, never freezes it).
        shrink |= due & (delta <= -block)
        new, growing, _ = _fit(
            tier, floor, req, target, forced, grow | shrink, capacity, cfg
        )
    base = np.maximum(req, tier.current.astype(np.float64))
    aligned = np.floor(new / block) * block
    # Raised to the floor unless that growth was cut for want of memory.
    aligned = np.where(
        growing,
        np.maximum(aligned, base),
        np.maximum(aligned, floor.astype(np.float64)),
    )
    result: I64 = np.minimum(aligned, tier.limit).astype(np.int64)
    return result


def _fit(
    tier: TierInputs,
    floor: I64,
    req: F64,
    target: F64,
    forced: BoolArray,
    move: BoolArray,
    capacity: float,
    cfg: PolicyConfig,
) -> tuple[F64, BoolArray, bool]:
    """New requests of the VMs that move (cut to the step limit), their growth
    cut to memory that is free now; which VMs grow; True if optional growth had
    to be cut.

    A shrinking VM still holds ``current`` until its guest has unplugged the
    blocks. Floors to restore come first, then the rest; neither past the
    capacity (memory that is not there cannot be plugged).
    """
    cur = tier.current.astype(np.float64)
    delta = target - req
    step = np.clip(delta, -float(cfg.max_step_bytes), float(cfg.max_step_bytes))
    new = np.where(forced, target, np.where(move, req + step, req))
    base = np.maximum(req, cur)
    growth = np.maximum(new - base, 0.0)
    growing = growth > 0
    committed = np.where(growing, base, np.maximum(new, cur))
    budget = max(capacity - float(committed.sum()), 0.0)
    below = forced & (req < floor)
    must = float(growth[below].sum())
    optional = float(growth[~below].sum())
    f_scale = min(1.0, budget / must) if must > 0 else 1.0
    o_scale = min(1.0, max(budget - must, 0.0) / optional) if optional > 0 else 1.0
    if f_scale < 1.0 or o_scale < 1.0:
        cut = growth * np.where(below, f_scale, o_scale)
        new = np.where(growing, base + cut, new)
    # Short by a block once aligned: a VM waits for memory.
    block = tier.block.astype(np.float64)
    short = growing & (np.floor(new / block) * block < base + growth - 0.5)
    return new, growing, bool((short & ~below).any())


def _align_up(value: F64, block: I64) -> I64:
    b = block.astype(np.float64)
    out: I64 = (np.ceil(value / b) * b).astype(np.int64)
    return out


def _want_blocks(want: F64, tier: TierInputs) -> F64:
    """A want in whole blocks, rounded up (a VM that wants 523.6 MiB can use the
    524th), never past the VM's limit: the rounding of a fair split of wants may
    then hand out every block of the capacity instead of leaving a block per VM
    unclaimed, and held by whoever had it."""
    b = tier.block.astype(np.float64)
    up: F64 = np.minimum(np.ceil(want / b) * b, tier.limit.astype(np.float64))
    return up


def _align_split(value: F64, block: I64, limit: F64, capacity: float) -> F64:
    """``value`` in whole blocks without losing capacity to rounding: each VM
    rounded down, then the blocks that rounding left go to the largest
    remainders (never past a limit), so the split is within one block of exact
    and at most one block short of ``capacity`` in total."""
    b = block.astype(np.float64)
    down = np.floor(value / b) * b
    left = min(capacity, float(value.sum())) - float(down.sum())
    if left < float(b.min()):
        return down
    order = np.argsort(-(value - down), kind="stable")
    room = (down + b <= limit)[order] & ((value - down)[order] > 0)
    step = np.where(room, b[order], 0.0)
    take = room & (np.cumsum(step) <= left + 0.5)
    out = down.copy()
    out[order[take]] += b[order[take]]
    return out


def plan(inputs: PolicyInputs, cfg: PolicyConfig) -> PolicyResult:
    """Target allotments of every VM (see the module docstring for the rules)."""
    fast, slow = inputs.fast, inputs.slow
    known = ~np.isnan(inputs.used_bytes)
    f_limit = fast.limit.astype(np.float64)
    s_limit = slow.limit.astype(np.float64)
    f_req = fast.requested.astype(np.float64)
    s_req = slow.requested.astype(np.float64)
    f_boot, s_boot = fast.boot_bytes(), slow.boot_bytes()
    weight = inputs.weight

    # What the host sees plugged bounds every claim about memory use.
    plugged = (
        np.maximum(fast.current, fast.requested)
        + np.maximum(slow.current, slow.requested)
        + f_boot
        + s_boot
    )
    used = np.minimum(np.nan_to_num(inputs.used_bytes, nan=0.0), plugged)
    hot = np.minimum(np.nan_to_num(inputs.hot_bytes, nan=0.0), used)
    # Allotment bytes the guest needs: what it uses beyond its boot memory plus
    # the margin; unknown (no report): everything.
    in_allot = np.maximum(used - f_boot - s_boot, 0.0)
    margin = np.maximum(
        float(cfg.safety_margin_bytes), cfg.safety_margin_ratio * in_allot
    )
    need = np.where(known, in_allot + margin, np.inf)
    # Floors protect what is plugged, never more: a guest claiming all of it
    # as used cannot ratchet its floors up by the margin round after round.
    # Growth past it (a guest short of memory) goes through the demand.
    keep_alive = np.minimum(need, plugged - f_boot - s_boot)

    # Fast tier: share, floor, demand, fair split, then change limits.
    f_cap = float(inputs.fast_capacity_bytes)
    f_share = _share(fast, f_limit, weight, f_cap)
    f_floor = _floor(fast, f_share, known, np.maximum(keep_alive - s_limit, 0.0))
    f_want_f = np.where(known, hot * (1.0 + cfg.hot_headroom_ratio) - f_boot, f_req)
    f_want = np.clip(f_want_f, f_floor, f_limit)
    f_fair = _fair(fast, f_floor, f_want, weight, f_cap)
    # Fast memory nobody demands stays where it is.
    spare = f_cap - float(f_fair.sum())
    give = np.maximum(np.minimum(f_req, f_limit) - f_fair, 0.0)
    if spare > 0.0 and float(give.sum()) > 0.0:
        f_fair = f_fair + give * min(1.0, spare / float(give.sum()))
    f_target = _limit_changes(fast, f_floor, f_fair, f_cap, inputs.now_s, cfg)

    # Slow tier: whatever the fast tier does not hold, plus headroom; shares
    # and floors as on the fast tier.
    s_cap = float(inputs.slow_capacity_bytes) * cfg.slow_overcommit_ratio
    s_share = _share(slow, s_limit, weight, s_cap)
    f_new = f_target.astype(np.float64)
    rest = need - f_new
    s_floor = _floor(slow, s_share, known, np.maximum(keep_alive - f_new, 0.0))
    s_want_f = np.where(known, rest * (1.0 + cfg.hot_headroom_ratio), s_req)
    s_want = np.clip(s_want_f, s_floor, s_limit)
    s_fair = _fair(slow, s_floor, s_want, weight, s_cap)
    s_target = _limit_changes(slow, s_floor, s_fair, s_cap, inputs.now_s, cfg)
    return PolicyResult(
        _result(f_share, f_floor, f_want, f_target, inputs.fast_capacity_bytes),
        _result(s_share, s_floor, s_want, s_target, s_cap),
    )


def _floor(tier: TierInputs, share: F64, known: BoolArray, needed: F64) -> I64:
    """Rule 2 on one tier: what each VM with a fresh report (``known``) needs
    there, and what each without one has, capped by its share, at least its
    reservation, in whole blocks within the limit. The cap holds either way:
    with the slow tier uncapped for VMs without a report, a guest that claimed
    all it had as used and then went silent (or had its channel throttled on
    purpose) kept 1,024 MiB of slow memory against a share of 220."""
    held = np.where(known, needed, tier.requested.astype(np.float64))
    floor = np.maximum(tier.reservation.astype(np.float64), np.minimum(held, share))
    out: I64 = np.minimum(_align_up(floor, tier.block), tier.limit)
    return out


def _share(tier: TierInputs, limit: F64, weight: F64, cap: float) -> F64:
    """Each VM's weighted share of ``cap`` in whole blocks, its reservation at least."""
    res = tier.reservation.astype(np.float64)
    share = _align_split(fair_split(res, limit, weight, cap), tier.block, limit, cap)
    return np.maximum(share, res)


def _fair(tier: TierInputs, floor: I64, want: F64, weight: F64, cap: float) -> F64:
    """The split of ``cap`` between the floors and the demand, in whole blocks."""
    fair = fair_split(floor.astype(np.float64), want, weight, cap)
    return _align_split(fair, tier.block, _want_blocks(want, tier), cap)


def _result(share: F64, floor: I64, want: F64, target: I64, cap: float) -> TierResult:
    return TierResult(
        share=share.astype(np.int64),
        floor=floor,
        want=want.astype(np.int64),
        target=target,
        overcommitted=int(floor.sum()) > cap,
    )


def host_capacity(nodes: Sequence[HostNode], cfg: Config) -> tuple[int, int, bool]:
    """(fast, slow capacity in bytes, slow tier emulated) of the host ``nodes``.

    The fast capacity is ``host.fast_capacity_bytes``, or the fast nodes less
    ``policy.host_reserved_bytes``. Without a slow node the slow tier is
    emulated on the fast nodes' memory (``status`` says so), and the two tiers
    split it: the fast tier ``host.emulated_fast_share`` of it (or
    ``host.fast_capacity_bytes``, at most all of it), the slow tier the rest.

    Raises:
        ConfigError: no slow node and ``host.emulate_slow_tier`` is false.
    """
    fast = sum(n.total_bytes for n in nodes if n.tier is Tier.FAST)
    slow = sum(n.total_bytes for n in nodes if n.tier is Tier.SLOW)
    usable = max(0, fast - cfg.policy.host_reserved_bytes)
    emulated = slow == 0
    if not emulated:
        return cfg.host.fast_capacity_bytes or usable, slow, False
    if not cfg.host.emulate_slow_tier:
        raise ConfigError(
            "host has no slow-tier node and host.emulate_slow_tier is false"
        )
    fast_cap = min(
        usable,
        cfg.host.fast_capacity_bytes or int(usable * cfg.host.emulated_fast_share),
    )
    return fast_cap, usable - fast_cap, True


TIERS = (Tier.FAST, Tier.SLOW)
"""The tiers in the order of axis 0 of the (2, n) arrays of :func:`order_resizes`."""


class Step(enum.IntEnum):
    """When a resize is issued within one tick (lower first).

    Slow growth first, so pages the fast tier gives up have somewhere to go;
    fast growth last, so it uses the memory the shrinks released.
    """

    SLOW_GROWTH = 0
    FAST_SHRINK = 1
    SLOW_SHRINK = 2
    FAST_GROWTH = 3

    @classmethod
    def of(cls, tier: Tier, grow: bool) -> Step:
        if tier is Tier.FAST:
            return cls.FAST_GROWTH if grow else cls.FAST_SHRINK
        return cls.SLOW_GROWTH if grow else cls.SLOW_SHRINK


@dataclass(frozen=True)
class Resize:
    """One resize of one VM's allotment: ``row`` indexes the policy arrays."""

    step: Step
    row: int
    tier: Tier
    new_bytes: int


def order_resizes(requested: I64, target: I64, floor: I64, budget: int) -> list[Resize]:
    """The resizes of one tick, at most ``budget`` of them, in issue order.

    Arrays are (2, n): axis 0 is :data:`TIERS`, axis 1 the VMs. A VM whose
    target differs from its request gets a resize per such tier. VMs are
    admitted whole (both of a VM's resizes, or neither) while the budget lasts:
    first the VMs below a floor on some tier (they need memory to stay alive),
    then the others by the size of their largest change, ties by row. The
    admitted resizes are issued by :class:`Step`, and by admission order
    within a step.
    """
    delta = np.abs(target - requested)
    changed = delta > 0
    below_floor = ((requested < floor) & changed).any(axis=0)
    largest = delta.max(axis=0) if delta.size else np.zeros(0, np.int64)
    rows = np.flatnonzero(changed.any(axis=0))
    # lexsort: the last key is the primary one; stable, so ties keep row order.
    rows = rows[np.lexsort((-largest[rows], ~below_floor[rows]))]
    admitted: list[Resize] = []
    for r in rows.tolist():
        mine = [
            Resize(
                Step.of(tier, bool(target[k, r] > requested[k, r])),
                r,
                tier,
                int(target[k, r]),
            )
            for k, tier in enumerate(TIERS)
            if changed[k, r]
        ]
        if len(admitted) + len(mine) > budget:
            break
        admitted += mine
    return sorted(admitted, key=lambda op: op.step)
