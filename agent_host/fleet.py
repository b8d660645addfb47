"""The host daemon's per-VM state: one :class:`Fleet` of :class:`VmState`.

A VM's numbers (allotments, settings, report, last resize) are one column of
the fleet's arrays, so a tick hands them to the vectorised policy without
copying VM by VM; everything else about the VM is its :class:`VmState`. The
fleet alone assigns rows: ``states[r].row == r`` after every :meth:`rebuild`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent_host.backend import Allotment, DomainInfo, Tier
from agent_host.channel import GuestChannel, GuestReport
from agent_host.domxml import TieringMetadata
from agent_host.policy import TIERS

__all__ = ["Fleet", "VmState"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_NO_LIMIT = -1  # a tier without a limit in the metadata: the device size is the limit


def _ordered(info: DomainInfo) -> tuple[Allotment, Allotment]:
    """The VM's two allotments in the order of :data:`TIERS` (fast, slow)."""
    a, b = info.allotments
    return (a, b) if a.tier is TIERS[0] else (b, a)


@dataclass(eq=False)
class VmState:
    """What the daemon keeps of one VM besides its numbers (rebuilt from the
    domain's metadata after a restart)."""

    vm: str
    meta: TieringMetadata
    channel: GuestChannel
    info: DomainInfo
    row: int = -1  # its column in the fleet's arrays; set by Fleet only
    allot: tuple[Allotment, Allotment] = field(init=False)
    sent_allot: tuple[int, int] | None = None
    # The channel connection the reader's partial line came from, and when
    # the host last asked a guest that reports without a hello for one.
    channel_connection: int = 0
    hello_asked_s: float = -math.inf
    # When the guest agent was first told of a fast-tier shrink still pending.
    shrink_notice_s: float | None = None
    allot_seq: int = 0
    resizes: int = 0
    resize_errors: int = 0
    implausible: int = 0  # reports that claim more than the host sees plugged
    last_implausible: str = ""
    seen_report: GuestReport | None = None

    def __post_init__(self) -> None:
        self.allot = _ordered(self.info)

    def set_info(self, info: DomainInfo) -> None:
        self.info = info
        self.allot = _ordered(info)


class Fleet:
    """Every tiered VM the daemon manages, and their numbers as arrays.

    Arrays of shape (2, n) have the tiers of :data:`TIERS` on axis 0; (n,)
    arrays are per VM. Adding or removing a VM leaves the arrays as they are
    until :meth:`rebuild`, which the daemon calls before it reads them again.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, VmState] = {}
        self.states: list[VmState] = []
        self._alloc(0)

    def _alloc(self, n: int) -> None:
        self.weight: FloatArray = np.ones(n)
        self.requested: IntArray = np.zeros((2, n), np.int64)
        self.current: IntArray = np.zeros((2, n), np.int64)
        self.block: IntArray = np.ones((2, n), np.int64)
        self.boot: IntArray = np.zeros((2, n), np.int64)  # host-known, from the domain
        self.max: IntArray = np.zeros((2, n), np.int64)  # the device size
        self.meta_limit: IntArray = np.full((2, n), _NO_LIMIT, np.int64)
        self.limit: IntArray = np.zeros((2, n), np.int64)
        self.reservation: IntArray = np.zeros((2, n), np.int64)
        self.last_resize_s: FloatArray = np.full((2, n), -math.inf)
        self.received_s: FloatArray = np.full(n, -math.inf)
        self.hot: FloatArray = np.full(n, np.nan)
        self.used: FloatArray = np.full(n, np.nan)
        # The policy's latest targets; (2, 0) until a tick plans for these rows.
        self.target: IntArray = np.zeros((2, 0), np.int64)

    # -- membership -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, vm: str) -> bool:
        return vm in self._by_name

    def __iter__(self) -> Iterator[VmState]:
        return iter(self.states)

    def __getitem__(self, vm: str) -> VmState:
        return self._by_name[vm]

    def get(self, vm: str) -> VmState | None:
        return self._by_name.get(vm)

    def names(self) -> list[str]:
        return list(self._by_name)

    def add(self, st: VmState) -> None:
        self._by_name[st.vm] = st

    def remove(self, vm: str) -> bool:
        """Forget ``vm``; True if it was here."""
        return self._by_name.pop(vm, None) is not None

    @property
    def stale(self) -> bool:
        """VMs came or went since the last :meth:`rebuild`."""
        return len(self.states) != len(self._by_name) or any(
            st.vm not in self._by_name for st in self.states
        )

    def rebuild(self, weight: Callable[[VmState], float]) -> None:
        """New arrays for the current VMs (rows in the order they were added).

        What survives a rebuild is kept per VM: its last resize times; settings
        and allotments are loaded again from each VM's metadata and info.
        """
        old_last = self.last_resize_s
        kept = [(st, st.row) for st in self._by_name.values()]
        self.states = [st for st, _ in kept]
        self._alloc(len(self.states))
        for row, (st, old_row) in enumerate(kept):
            if 0 <= old_row < old_last.shape[1]:
                self.last_resize_s[:, row] = old_last[:, old_row]
            st.row = row
            self.load_settings(st, weight(st))
        self.load_allotments()

    # -- loading --------------------------------------------------------------

    def load_allotments(self) -> None:
        """Every VM's allotments, as its info last said, into the arrays at once."""
        n = len(self.states)
        if n == 0:
            return
        rows = np.array(
            [
                (
                    a.requested_bytes,
                    a.current_bytes,
                    a.block_bytes,
                    a.boot_bytes,
                    a.max_bytes,
                )
                for st in self.states
                for a in st.allot
            ],
            dtype=np.int64,
        ).reshape(n, 2, 5)
        self.requested[:] = rows[:, :, 0].T
        self.current[:] = rows[:, :, 1].T
        self.block[:] = rows[:, :, 2].T
        self.boot[:] = rows[:, :, 3].T
        self.max[:] = rows[:, :, 4].T
        self._derive_limits()

    def load_settings(self, st: VmState, weight: float) -> None:
        """``st``'s class weight, reservations and limits (from its metadata)."""
        r = st.row
        self.weight[r] = weight
        self.meta_limit[:, r] = _NO_LIMIT
        self.reservation[:, r] = 0
        for t in st.meta.tiers:
            k = TIERS.index(t.tier)
            self.reservation[k, r] = t.reservation_bytes
            self.meta_limit[k, r] = t.limit_bytes
        self.max[:, r] = [a.max_bytes for a in st.allot]
        self._derive_limits()

    def _derive_limits(self) -> None:
        self.limit[:] = np.where(
            self.meta_limit < 0, self.max, np.minimum(self.meta_limit, self.max)
        )

    # -- per-VM views ---------------------------------------------------------

    def limit_of(self, st: VmState, tier: Tier) -> int:
        return int(self.limit[TIERS.index(tier), st.row])

    def reservation_of(self, st: VmState, tier: Tier) -> int:
        return int(self.reservation[TIERS.index(tier), st.row])

    def limits_by_name(self, st: VmState) -> dict[str, int]:
        """``st``'s limits as the guest channel checks reports against them."""
        return {t.value: int(self.limit[k, st.row]) for k, t in enumerate(TIERS)}
