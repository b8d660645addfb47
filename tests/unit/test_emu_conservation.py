"""Property: no page is lost or duplicated across migrations, resizes and exits."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.machine import PAGE_SIZE, World
from emu.workloads import make_workload

MIB = 1 << 20


def _migration(name: str, max_pages: int) -> st.SearchStrategy[tuple[object, ...]]:
    """A run of pages to migrate, for the guest's move_pages or the host's
    migration: (name, which process or VM, first page, page count, target node)."""
    return st.tuples(
        st.just(name),
        st.integers(0, 3),
        st.integers(0, 8191),
        st.integers(1, max_pages),
        st.integers(0, 1),
    )


op = st.one_of(
    _migration("move", 600),
    st.tuples(
        st.just("resize"),
        st.integers(0, 3),
        st.integers(0, 1),
        st.integers(0, 48),
        st.just(0),
    ),
    st.tuples(
        st.just("spawn"),
        st.integers(0, 3),
        st.integers(1024, 6000),
        st.just(0),
        st.just(0),
    ),
    st.tuples(st.just("kill"), st.integers(0, 3), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("run"), st.integers(0, 3), st.just(0), st.just(0), st.just(0)),
    _migration("host_migrate", 300),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, min_size=1, max_size=25), st.integers(0, 2**16))
def test_no_page_lost_or_duplicated(
    ops: list[tuple[str, int, int, int, int]], seed: int
) -> None:
    w = World(48 * MIB, 256 * MIB, seed=seed)
    w.add_vm("a", 2, 16 * MIB, 32 * MIB, 32 * MIB, 64 * MIB)
    w.add_vm("b", 1, 8 * MIB, 16 * MIB, 16 * MIB, 32 * MIB)
    pids: list[tuple[str, int]] = []
    for kind, a, b, c, d in ops:
        vm = "ab"[a % 2]
        live = [(v, p) for v, p in pids if v == vm and p in w.vm(v).procs]
        if kind == "spawn":
            pids.append((vm, w.spawn(vm, make_workload("gups", b, seed=a), 10**5)))
        elif kind == "kill" and live:
            w.kill(*live[a % len(live)])
        elif kind == "move" and live:
            v, p = live[a % len(live)]
            proc = w.process(v, p)
            vpn = (b + np.arange(c)) % proc.npages
            w.move_pages(v, p, proc.addr_of(vpn), d)
        elif kind == "resize":
            w.resize(vm, b, c * 2 * MIB)
        elif kind == "run":
            w.clock.advance(0.002)
        elif kind == "host_migrate":
            frames = w.vm(vm).f
            gfns = np.flatnonzero(frames.host >= 0)[b % 97 : b % 97 + c]
            w.host_migrate(vm, gfns.astype(np.int64), d)
        w.check_invariants()
    # every mapped page is readable at exactly one node
    for v, p in pids:
        if p in w.vm(v).procs:
            proc = w.process(v, p)
            nodes = w.page_nodes(v, p, proc.addr_of(np.arange(proc.npages)))
            assert np.count_nonzero(nodes >= 0) == np.count_nonzero(proc.pt >= 0)
    for vm in w.vms.values():
        for node in (0, 1):
            assert vm.used_pages(node) * PAGE_SIZE <= vm.plugged[node] * PAGE_SIZE
