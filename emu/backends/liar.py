"""A guest backend whose agent lies: every report replaced by a maximal claim,
or (flapping) by a maximal claim and a claim of nothing in turn.

The multi-tenant preset (emu.evaluation.tenants) runs it to check that the host
agent holds a lying VM to what its class may have, and what a lie costs the
honest VMs (docs/baselines.md).
"""

from __future__ import annotations

from dataclasses import replace

import hypertier_wire as wire
from emu.backends.guest import EmuGuestBackend
from emu.machine import World

__all__ = ["LyingGuestBackend"]


class LyingGuestBackend(EmuGuestBackend):
    """A guest whose agent places honestly but whose reports claim everything.

    Every report the agent sends is replaced by a valid maximal claim: each
    node full (``used_bytes = total_bytes``), ``hot_bytes`` = all its memory,
    ``pressure`` 1.0. Node totals are the true ones, or ``claim_node_bytes``
    each (the "huge" liar). With ``flap_s``, the lie alternates: the maximal
    claim for ``flap_s`` emulated seconds, then no hot set at all (``hot_bytes``
    0, ``pressure`` 0, the true usage) for as long, and so on: each turn moves
    the host's split between the VMs, which the honest ones pay for in
    demotions and promotions. Other fields keep the agent's values; hellos and
    anything that is not a report pass unchanged. ``lies`` counts rewrites.
    """

    def __init__(
        self,
        world: World,
        vm: str,
        pmu: str = "pebs",
        claim_node_bytes: int | None = None,
        flap_s: float | None = None,
    ) -> None:
        super().__init__(world, vm, pmu)
        if flap_s is not None and not flap_s > 0:
            raise ValueError(f"flap_s must be > 0, got {flap_s}")
        self._claim = claim_node_bytes
        self._flap_s = flap_s
        self._partial = b""
        self.lies = 0

    def lie(self, report: wire.Report) -> wire.Report:
        """The claim that replaces ``report``: the maximal one, or while a
        flapping liar is in its off turn, no hot set."""
        if self._flap_s is not None:
            turn = int(self._world.clock.monotonic() / self._flap_s)
            if turn % 2:
                return replace(report, hot_bytes=0, pressure=0.0)
        nodes = tuple(
            wire.NodeUsage(
                n.node,
                n.tier,
                self._claim if self._claim is not None else n.total_bytes,
                self._claim if self._claim is not None else n.total_bytes,
            )
            for n in report.nodes
        )
        memory = min(sum(n.total_bytes for n in nodes), wire.MAX_BYTES)
        return replace(report, nodes=nodes, hot_bytes=memory, pressure=1.0)

    def channel_send(self, line: bytes) -> None:
        data = self._partial + line
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        out = []
        for raw in data[:end].split(b"\n")[:-1]:
            try:
                msg = wire.decode(raw)
            except wire.WireError:
                msg = None
            if isinstance(msg, wire.Report):
                out.append(wire.encode(self.lie(msg)))
                self.lies += 1
            else:
                out.append(raw + b"\n")
        if out:
            super().channel_send(b"".join(out))
