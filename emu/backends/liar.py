"""A guest backend whose agent lies: every report replaced by a maximal claim.

The multi-tenant preset (emu.evaluation.tenants) runs it to check that the host
agent holds a lying VM to what its class may have (docs/baselines.md).
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
    each (the "huge" liar). Other fields keep the agent's values; hellos and
    anything that is not a report pass unchanged. ``lies`` counts rewrites.
    """

    def __init__(
        self,
        world: World,
        vm: str,
        pmu: str = "pebs",
        claim_node_bytes: int | None = None,
    ) -> None:
        super().__init__(world, vm, pmu)
        self._claim = claim_node_bytes
        self._partial = b""
        self.lies = 0

    def lie(self, report: wire.Report) -> wire.Report:
        """The maximal claim that replaces ``report``."""
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
