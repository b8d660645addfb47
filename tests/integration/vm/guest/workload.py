"""Workload with a known hot set, run inside the HyperTier test VM (not the product).

One anonymous mapping: a hot region (rewritten and verified every iteration), a
PROT_NONE guard page (keeps two VMAs apart in numa_maps), and a cold region (written
once, verified at the end). Every 4 KiB page holds a value derived from its index and
generation, so any lost or corrupted page is detected. Initial placement is forced
with set_mempolicy(MPOL_BIND): hot on --hot-node, cold on --cold-node (the wrong way
round, so the agent has to promote and demote). Page placement is read back with
move_pages(2) (nodes=NULL: query) and written with the counters to --status as JSON.
SIGTERM: final full verification, final status, exit 0 if no page ever mismatched.
"""

import argparse
import ctypes
import json
import mmap
import os
import signal
import sys
import time

import numpy as np

PAGE = 4096
WORDS = PAGE // 8
MPOL_DEFAULT, MPOL_BIND = 0, 2
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_set_mempolicy = 238
SYS_move_pages = 279
STOP = False


def _stop(signum, frame):
    global STOP
    STOP = True


def set_mempolicy(mode, node=None):
    if node is None:
        rc = libc.syscall(SYS_set_mempolicy, mode, None, ctypes.c_ulong(0))
    else:
        mask = ctypes.c_ulong(1 << node)
        rc = libc.syscall(
            SYS_set_mempolicy, mode, ctypes.byref(mask), ctypes.c_ulong(64)
        )
    if rc != 0:
        raise OSError(ctypes.get_errno(), "set_mempolicy")


def page_nodes(addr, npages):
    """Node of each page (negative errno if not present), via move_pages query."""
    pages = (ctypes.c_void_p * npages)(*[addr + i * PAGE for i in range(npages)])
    status = (ctypes.c_int * npages)()
    rc = libc.syscall(SYS_move_pages, 0, ctypes.c_ulong(npages), pages, None, status, 0)
    if rc != 0:
        raise OSError(ctypes.get_errno(), "move_pages")
    return np.frombuffer(status, dtype=np.int32).copy()


def counts(nodes):
    values, n = np.unique(nodes, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, n, strict=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hot-mib", type=int, default=32)
    ap.add_argument("--cold-mib", type=int, default=128)
    ap.add_argument("--hot-node", type=int, default=1)
    ap.add_argument("--cold-node", type=int, default=0)
    ap.add_argument("--status", default="/tmp/workload.json")
    ap.add_argument("--interval-s", type=float, default=1.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    hot_pages = args.hot_mib * 256
    cold_pages = args.cold_mib * 256
    total = (hot_pages + 1 + cold_pages) * PAGE
    mm = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages: exact per-page accounting
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    words = np.frombuffer(mm, dtype=np.uint64)
    hot = words[: hot_pages * WORDS].reshape(hot_pages, WORDS)
    cold_start = (hot_pages + 1) * WORDS
    cold = words[cold_start : cold_start + cold_pages * WORDS].reshape(
        cold_pages, WORDS
    )
    hot_addr, cold_addr = base, base + (hot_pages + 1) * PAGE
    hot_ids = np.arange(hot_pages, dtype=np.uint64)[:, None] << np.uint64(24)
    cold_ids = (np.arange(cold_pages, dtype=np.uint64)[:, None] << np.uint64(24)) | (
        np.uint64(1) << np.uint64(62)
    )

    set_mempolicy(MPOL_BIND, args.cold_node)
    cold[:] = cold_ids
    set_mempolicy(MPOL_BIND, args.hot_node)
    hot[:] = hot_ids
    set_mempolicy(MPOL_DEFAULT)
    guard = base + hot_pages * PAGE
    if libc.mprotect(ctypes.c_void_p(guard), ctypes.c_size_t(PAGE), 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")

    state = {
        "pid": os.getpid(),
        "hot_addr": hot_addr,
        "hot_pages": hot_pages,
        "cold_addr": cold_addr,
        "cold_pages": cold_pages,
        "iterations": 0,
        "errors": 0,
        "started": time.monotonic(),
        "done": False,
    }
    history = []

    def write_status(final=False):
        hot_nodes = counts(page_nodes(hot_addr, hot_pages))
        cold_nodes = counts(page_nodes(cold_addr, cold_pages))
        history.append(
            {
                "t": round(time.monotonic() - state["started"], 2),
                "hot": hot_nodes,
                "cold": cold_nodes,
            }
        )
        state.update(hot_nodes=hot_nodes, cold_nodes=cold_nodes, history=history[-300:])
        state["done"] = final
        tmp = args.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, args.status)

    gen = np.uint64(0)
    write_status()
    last = time.monotonic()
    while not STOP:
        bad = int(np.count_nonzero((hot != hot_ids + gen).any(axis=1)))
        state["errors"] += bad
        gen += np.uint64(1)
        hot[:] = hot_ids + gen
        state["iterations"] += 1
        if time.monotonic() - last >= args.interval_s:
            write_status()
            last = time.monotonic()
    bad_hot = int(np.count_nonzero((hot != hot_ids + gen).any(axis=1)))
    bad_cold = int(np.count_nonzero((cold != cold_ids).any(axis=1)))
    state["errors"] += bad_hot + bad_cold
    state["final_bad_hot_pages"] = bad_hot
    state["final_bad_cold_pages"] = bad_cold
    write_status(final=True)
    return 0 if state["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
