"""Tier sizing: elastic, class-weighted fast tier; overcommittable slow tier (pure).

Input is one :class:`PolicyInputs` (numpy arrays, one entry per VM); output the
target allotment of each VM per tier. Vectorised, so 1000 VMs take well under a
millisecond. The rules, in order of precedence (docs/host.md explains them):

1. never above the limit; never below the reservation;
2. never below what the guest uses plus a safety margin: the *sum* of both
   allotments covers the guest's used memory plus the margin, and a fast-tier
   shrink is only planned when the slow tier can take the displaced pages;
   without a (fresh) guest report, usage is unknown and nothing shrinks;
3. the fast tier's spare capacity (above all floors) goes to VMs that want more,
   by weighted water-filling: weight = class weight x (1 + pressure), demand
   = hot set x (1 + headroom), or more under pressure; what nobody wants stays
   with the VMs that hold it (a shrink costs demotions and frees memory for no
   one);
4. changes smaller than the hysteresis band, sooner than ``min_resize_interval_s``
   after the last one, or larger than ``max_step_bytes`` are held back or cut,
   except to restore a floor; growth, even to a floor, never exceeds memory that
   is actually free (a shrinking VM's ``current`` counts until the guest has
   unplugged it); floors are served before other growth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent_host.config import PolicyConfig

__all__ = ["PolicyInputs", "PolicyResult", "TierInputs", "TierResult", "plan"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TierInputs:
    """One tier of every VM; arrays of bytes, shape (n,)."""

    requested: IntArray
    current: IntArray
    reservation: IntArray
    limit: IntArray
    block: IntArray
    last_resize_s: FloatArray  # -inf: never resized by us


@dataclass(frozen=True)
class PolicyInputs:
    """Everything the policy knows about ``n`` VMs at time ``now_s``.

    Guest-report arrays hold NaN where a VM has no fresh validated report.
    ``used_bytes`` is the guest's used memory over all its nodes (as the guest
    counts it, so it never mixes with the host's possibly older view of what is
    plugged) and
    ``fast_boot_bytes`` the fixed (non-virtio-mem) memory of its fast node.
    """

    now_s: float
    weight: FloatArray
    hot_bytes: FloatArray
    pressure: FloatArray
    used_bytes: FloatArray
    fast_boot_bytes: FloatArray
    fast: TierInputs
    slow: TierInputs
    fast_capacity_bytes: int
    slow_capacity_bytes: int

    def __len__(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class TierResult:
    """Per-VM floor, demand and target (bytes, block-aligned) of one tier."""

    floor: IntArray
    want: IntArray
    target: IntArray
    overcommitted: bool  # the floors alone exceed the tier's capacity

    def changed(self, requested: IntArray) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = np.not_equal(self.target, requested)
        return out


@dataclass(frozen=True)
class PolicyResult:
    fast: TierResult
    slow: TierResult


def waterfill(
    floor: FloatArray, want: FloatArray, weight: FloatArray, capacity: float
) -> FloatArray:
    """Weighted max-min fair shares: floor + min(want - floor, weight x level).

    ``level`` is the largest value for which the total fits ``capacity``; if even
    the floors do not fit, the floors are returned (callers report overcommit).
    """
    extra = np.maximum(want - floor, 0.0)
    budget = capacity - float(floor.sum())
    if budget <= 0.0:
        return floor.copy()
    if float(extra.sum()) <= budget:
        return floor + extra
    saturate = extra / weight
    order = np.argsort(saturate, kind="stable")
    sat = saturate[order]
    cum_extra = np.cumsum(extra[order])
    rest_weight = float(weight.sum()) - np.cumsum(weight[order])
    # Total allotted when the level equals each VM's saturation point.
    total_at = cum_extra + rest_weight * sat
    k = int(np.searchsorted(total_at, budget))
    done_extra = float(cum_extra[k - 1]) if k > 0 else 0.0
    free_weight = float(weight.sum()) - (
        float(np.cumsum(weight[order])[k - 1]) if k > 0 else 0.0
    )
    level = (budget - done_extra) / free_weight if free_weight > 0 else 0.0
    return floor + np.minimum(extra, weight * level)


def _limit_changes(
    tier: TierInputs,
    floor: IntArray,
    target: FloatArray,
    capacity: float,
    now_s: float,
    cfg: PolicyConfig,
) -> IntArray:
    """Apply hysteresis, the resize interval, the step limit and free capacity."""
    req = tier.requested.astype(np.float64)
    cur = tier.current.astype(np.float64)
    forced = (req < floor) | (req > tier.limit)
    delta = target - req
    band = np.maximum(float(cfg.hysteresis_bytes), cfg.hysteresis_ratio * req)
    due = (now_s - tier.last_resize_s) >= cfg.min_resize_interval_s
    move = ((np.abs(delta) >= band) & due) | forced
    step = np.clip(delta, -float(cfg.max_step_bytes), float(cfg.max_step_bytes))
    new = np.where(forced, target, np.where(move, req + step, req))
    # Growth only into memory that is free now: a shrinking VM still holds
    # ``current`` until its guest has unplugged the blocks.
    # Floors to restore come first, then the rest; neither past the capacity
    # (memory that is not there cannot be plugged: the host would fall back to
    # other nodes or fail the allocation).
    base = np.maximum(req, cur)
    growth = np.maximum(new - base, 0.0)
    growing = growth > 0
    committed = np.where(growing, base, np.maximum(new, cur))
    budget = max(capacity - float(committed.sum()), 0.0)
    must = float(growth[forced].sum())
    optional = float(growth[~forced].sum())
    f_scale = min(1.0, budget / must) if must > 0 else 1.0
    o_scale = min(1.0, max(budget - must, 0.0) / optional) if optional > 0 else 1.0
    if f_scale < 1.0 or o_scale < 1.0:
        cut = growth * np.where(forced, f_scale, o_scale)
        new = np.where(growing, base + cut, new)
    block = tier.block.astype(np.float64)
    aligned = np.floor(new / block) * block
    # Raised to the floor unless that growth was cut for want of memory.
    aligned = np.where(
        growing,
        np.maximum(aligned, base),
        np.maximum(aligned, floor.astype(np.float64)),
    )
    result: IntArray = np.minimum(aligned, tier.limit).astype(np.int64)
    return result


def _align_up(value: FloatArray, block: IntArray) -> IntArray:
    b = block.astype(np.float64)
    out: IntArray = (np.ceil(value / b) * b).astype(np.int64)
    return out


def plan(inputs: PolicyInputs, cfg: PolicyConfig) -> PolicyResult:
    """Target allotments of every VM (see the module docstring for the rules)."""
    fast, slow = inputs.fast, inputs.slow
    known = ~np.isnan(inputs.used_bytes)
    f_limit = fast.limit.astype(np.float64)
    s_limit = slow.limit.astype(np.float64)
    f_req = fast.requested.astype(np.float64)
    s_req = slow.requested.astype(np.float64)

    # Allotment bytes the guest needs: what it uses (less its boot memory, which
    # is no allotment) plus the margin. Unknown
    # (no report): everything requested is needed.
    # The fast node's boot memory is not an allotment: take it off.
    used = np.maximum(
        np.nan_to_num(inputs.used_bytes, nan=0.0) - inputs.fast_boot_bytes, 0.0
    )
    margin = np.maximum(float(cfg.safety_margin_bytes), cfg.safety_margin_ratio * used)
    need = np.where(known, used + margin, np.inf)

    # Fast tier: floor, demand, weighted share, then change limits.
    f_floor_f = np.maximum(fast.reservation, np.minimum(need - s_limit, f_limit))
    f_floor_f = np.where(known, f_floor_f, np.maximum(fast.reservation, f_req))
    f_floor = np.minimum(_align_up(f_floor_f, fast.block), fast.limit)
    hot = np.nan_to_num(inputs.hot_bytes, nan=0.0)
    pressure = np.clip(np.nan_to_num(inputs.pressure, nan=0.0), 0.0, 1.0)
    # Under pressure, ask for at least twice the hysteresis band, or small VMs
    # would never get past it.
    band = np.maximum(float(cfg.hysteresis_bytes), cfg.hysteresis_ratio * f_req)
    growth = np.maximum(cfg.pressure_growth_ratio * f_req, 2.0 * band) * pressure
    f_want_f = np.maximum(
        hot * (1.0 + cfg.hot_headroom_ratio) - inputs.fast_boot_bytes,
        np.where(pressure > 0, f_req + growth, 0.0),
    )
    f_want_f = np.where(known, f_want_f, f_req)
    f_want = np.clip(f_want_f, f_floor, f_limit)
    weight = inputs.weight * (1.0 + pressure)
    f_share = waterfill(
        f_floor.astype(np.float64), f_want, weight, float(inputs.fast_capacity_bytes)
    )
    # Fast memory nobody wants stays where it is: a shrink costs the guest
    # demotions and only pays when another VM takes the memory.
    spare = float(inputs.fast_capacity_bytes) - float(f_share.sum())
    give = np.maximum(np.minimum(f_req, f_limit) - f_share, 0.0)
    if spare > 0.0 and float(give.sum()) > 0.0:
        f_share = f_share + give * min(1.0, spare / float(give.sum()))
    f_target = _limit_changes(
        fast, f_floor, f_share, inputs.fast_capacity_bytes, inputs.now_s, cfg
    )
    fast_result = TierResult(
        floor=f_floor,
        want=f_want.astype(np.int64),
        target=f_target,
        overcommitted=int(f_floor.sum()) > inputs.fast_capacity_bytes,
    )

    # Slow tier: whatever the fast tier does not hold, plus headroom.
    f_new = f_target.astype(np.float64)
    s_floor_f = np.where(
        known,
        np.maximum(slow.reservation, np.minimum(need - f_new, s_limit)),
        np.maximum(slow.reservation, s_req),
    )
    s_floor = np.minimum(_align_up(s_floor_f, slow.block), slow.limit)
    s_want_f = np.where(
        known,
        (need - f_new) * (1.0 + cfg.hot_headroom_ratio),
        s_req,
    )
    s_want = np.clip(s_want_f, s_floor, s_limit)
    s_capacity = float(inputs.slow_capacity_bytes) * cfg.slow_overcommit_ratio
    s_share = waterfill(s_floor.astype(np.float64), s_want, inputs.weight, s_capacity)
    s_target = _limit_changes(slow, s_floor, s_share, s_capacity, inputs.now_s, cfg)
    slow_result = TierResult(
        floor=s_floor,
        want=s_want.astype(np.int64),
        target=s_target,
        overcommitted=int(s_floor.sum()) > s_capacity,
    )
    return PolicyResult(fast_result, slow_result)
