"""Sample-source selection by capability and sample-rate control to a CPU budget.

Pure policy over the backend Protocol: the backend says which sources exist
(``capabilities()``, detected from sysfs on Linux); this module picks the best one
and retunes its period so samples arrive near ``rate_hz`` and the agent's own CPU
(``cpu_time_s()``) stays within ``cpu_budget_pct`` of one core.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent_guest.backend import (
    SOURCE_CAPABILITY,
    AccessSamples,
    Capability,
    GuestBackend,
    SamplerSettings,
    SampleSource,
)
from agent_guest.config import SamplerConfig
from hypertier_common.errors import Unsupported

__all__ = [
    "PREFERENCE",
    "TRUSTED_SAMPLES",
    "TRUSTED_STEP",
    "RateControl",
    "Sampler",
    "select_source",
]

log = logging.getLogger(__name__)

PREFERENCE = (
    SampleSource.PEBS,
    SampleSource.IBS,
    SampleSource.PAGE_FAULT,
    SampleSource.SOFT_DIRTY,
)


def select_source(wanted: str, caps: frozenset[Capability]) -> SampleSource:
    """The configured source, or for "auto" the best one ``caps`` offers.

    Raises Unsupported naming what is missing.
    """
    if wanted != "auto":
        source = SampleSource(wanted)
        if SOURCE_CAPABILITY[source] not in caps:
            raise Unsupported(
                f"sample source {wanted!r}",
                f"capability {SOURCE_CAPABILITY[source].value} missing; this machine "
                f"offers {sorted(c.value for c in caps)}",
            )
        return source
    for source in PREFERENCE:
        if SOURCE_CAPABILITY[source] in caps:
            return source
    raise Unsupported(
        "access sampling",
        "no PEBS, IBS, page-fault or soft-dirty source; need perf_event_open "
        "(perf_event_paranoid <= 1 or CAP_PERFMON) or a kernel with "
        "CONFIG_MEM_SOFT_DIRTY",
    )


# A window with at least this many samples measures the rate to ~1/sqrt(n)
# (12 % at 64): the period may then go where it aims in one step, up to
# TRUSTED_STEP either way. A thinner window moves it at most 4x.
TRUSTED_SAMPLES = 64
TRUSTED_STEP = 256.0


@dataclass
class RateControl:
    """Multiplicative period control: toward ``rate_hz``, and away from the CPU cap.

    ``update`` returns the new period. A window of ``TRUSTED_SAMPLES`` or more
    moves it by what it measured (at most ``TRUSTED_STEP``); a thinner one at
    most 4x, so a noisy window cannot swing it far. Before this, every window
    moved it at most 4x, and each change discarded the next window: from the
    configured period to the one a workload needed took 7 epochs, in which an
    emulated liblinear VM drew two thirds of its run's samples (4,456 of 6,733)
    while aiming at 4,000/s.
    """

    rate_hz: float
    cpu_budget_frac: float
    min_period: int
    max_period: int
    period: int
    # events/s of the last whole window that had samples (0: none yet)
    events_hz: float = 0.0

    def update(
        self, samples: int, cpu_s: float, wall_s: float, *, partial: bool = False
    ) -> int:
        """The period after a window of ``wall_s`` seconds that generated
        ``samples`` and cost ``cpu_s`` of the agent's CPU. ``partial``: sampling
        started within the window, so its rate is a lower bound and its CPU
        holds the start-up: it may only lengthen the period, by its samples."""
        if wall_s <= 0:
            return self.period
        rate = samples / wall_s
        if rate > 0:
            factor = rate / self.rate_hz
            if not partial:
                self.events_hz = rate * self.period
        else:
            # Nothing seen: sample more often, but not below a quarter of the
            # period the last window with samples called for. The target may
            # only be idle (a server between clients): at period 1 its next
            # busy window would take a sample per event. Before any sample
            # there is no such floor: a fault source may see nothing at the
            # configured period, and PEBS's first busy window, however dense
            # (the kernel throttles it), resolves the start of placement.
            factor = 0.5
            if self.events_hz > 0:
                floor = self.events_hz / self.rate_hz / 4.0
                factor = min(1.0, max(factor, floor / self.period))
        cpu_frac = cpu_s / wall_s
        if partial:
            factor = max(1.0, factor)
        elif cpu_frac > self.cpu_budget_frac:
            factor = max(factor, cpu_frac / self.cpu_budget_frac)
        step = TRUSTED_STEP if samples >= TRUSTED_SAMPLES else 4.0
        factor = min(step, max(1.0 / step, factor))
        new = round(self.period * factor)
        self.period = min(self.max_period, max(self.min_period, new))
        return self.period


class Sampler:
    """Owns the backend's sampling session for the current target pids."""

    def __init__(self, backend: GuestBackend, cfg: SamplerConfig) -> None:
        self._backend = backend
        self._cfg = cfg
        self.source = select_source(cfg.source, backend.capabilities())
        self.control = RateControl(
            float(cfg.rate_hz),
            cfg.cpu_budget_pct / 100.0,
            cfg.min_period,
            cfg.max_period,
            cfg.period,
        )
        self._pids: tuple[int, ...] | None = None
        self._fresh = False
        self.samples = 0
        self.lost = 0
        self.throttled = 0

    def carry_counts(self, old: Sampler) -> None:
        """Continue ``old``'s counters (a reload replaces the sampler)."""
        self.samples, self.lost, self.throttled = old.samples, old.lost, old.throttled

    def settings(self) -> SamplerSettings:
        return SamplerSettings(
            source=self.source,
            period=self.control.period,
            ldlat_cycles=self._cfg.ldlat_cycles,
            ring_pages=self._cfg.ring_pages,
        )

    def start(self, pids: Sequence[int]) -> None:
        """(Re)start sampling ``pids`` if they or the period changed."""
        key = tuple(sorted(pids))
        if key == self._pids:
            return
        if not key:  # no targets: sample nothing rather than the whole system
            self.stop()
            return
        self._open(key)
        self._fresh = True  # the window under way is partial (RateControl.update)

    def _open(self, key: tuple[int, ...]) -> None:
        """Sample ``key`` at the current period."""
        self._backend.start_sampling(list(key), self.settings())
        self._pids = key
        log.info(
            "sampling %d pids with %s, period %d",
            len(key),
            self.source.value,
            self.control.period,
        )

    def read(self) -> AccessSamples:
        """Drain samples, keeping those of the target pids; count lost/throttled."""
        if not self._pids:
            return AccessSamples.empty(self.source)
        batch = self._backend.read_samples()
        self.lost += batch.lost
        self.throttled += batch.throttled
        if self._pids:
            keep = np.isin(batch.pid, np.asarray(self._pids, np.int32))
            if not keep.all():
                batch = AccessSamples(
                    batch.source,
                    batch.pid[keep],
                    batch.addr[keep],
                    batch.time_ns[keep],
                    batch.weight[keep],
                    batch.lost,
                    batch.throttled,
                )
        self.samples += len(batch)
        return batch

    def adapt(self, samples: int, cpu_s: float, wall_s: float) -> None:
        """Retune the period after a window in which ``samples`` were generated
        (delivered or lost); restart sampling if it changed."""
        if not self._pids:
            return
        partial, self._fresh = self._fresh, False
        old = self.control.period
        new = self.control.update(samples, cpu_s, wall_s, partial=partial)
        if new != old:
            log.debug("sample period %d -> %d", old, new)
            pids, self._pids = self._pids, None  # not sampling if reopening fails
            self._open(pids)  # the next window is whole: the events reopen as it begins

    def stop(self) -> None:
        if self._pids is not None:
            self._backend.stop_sampling()
            self._pids = None
