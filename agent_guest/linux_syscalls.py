"""perf_event_open(2), move_pages(2) and set_mempolicy(2) through libc's
syscall(2), with ctypes.

glibc wraps none of them, so all go through ``syscall(2)`` by number; errno
values become agent_guest errors here. Man pages: perf_event_open(2),
move_pages(2), set_mempolicy(2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

import numpy as np

from agent_guest.backend import PAGE_SIZE
from agent_guest.errors import NoSuchProcess
from hypertier_common.arrays import I32, U64
from hypertier_common.errors import AccessDenied, BackendError, Unsupported

__all__ = ["MPOL_MF_MOVE", "MPOL_MF_MOVE_ALL", "MPOL_PREFERRED", "Syscalls"]

# Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic).
_SYSCALLS = {
    "x86_64": {"perf_event_open": 298, "move_pages": 279, "set_mempolicy": 238},
    "aarch64": {"perf_event_open": 241, "move_pages": 239, "set_mempolicy": 237},
}
MPOL_PREFERRED = 1  # include/uapi/linux/mempolicy.h
MPOL_MF_MOVE = 1 << 1  # pages mapped only by the target
MPOL_MF_MOVE_ALL = 1 << 2  # shared pages too; needs CAP_SYS_NICE
_UNSET = np.iinfo(np.int32).min


class Syscalls:
    """The two system calls of this machine's architecture (``platform.machine()``)."""

    def __init__(self) -> None:
        self.machine = platform.machine()
        self._nr = _SYSCALLS.get(self.machine)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    @property
    def known(self) -> bool:
        """Whether the syscall numbers of this architecture are known."""
        return self._nr is not None

    def _number(self, name: str) -> int:
        if self._nr is None:
            raise Unsupported(name, f"no syscall number for {self.machine}")
        return self._nr[name]

    def perf_event_open(self, attr: bytes, pid: int, cpu: int) -> int:
        """A new perf event fd for the encoded ``perf_event_attr`` ``attr``.

        Raises:
            AccessDenied: EACCES/EPERM (perf_event_paranoid, CAP_PERFMON).
            NoSuchProcess: ESRCH.
            Unsupported: any other errno.
        """
        buf = ctypes.create_string_buffer(attr, len(attr))
        fd = int(
            self._libc.syscall(
                ctypes.c_long(self._number("perf_event_open")),
                buf,
                ctypes.c_int(pid),
                ctypes.c_int(cpu),
                ctypes.c_int(-1),
                ctypes.c_ulong(0),
            )
        )
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        what = f"perf_event_open(pid={pid}, cpu={cpu})"
        if e in (errno.EACCES, errno.EPERM):
            raise AccessDenied(
                what,
                "needs CAP_PERFMON (or root) or kernel.perf_event_paranoid <= 0 "
                "for system-wide events",
            )
        if e == errno.ESRCH:
            raise NoSuchProcess(pid)
        raise Unsupported(what, os.strerror(e))

    def set_mempolicy(self, mode: int, node: int) -> None:
        """set_mempolicy(2) of the calling thread (threads it starts inherit it):
        ``mode`` over the one node ``node``.

        Raises:
            BackendError: the kernel refused (EINVAL: no such node or mode).
        """
        mask = (ctypes.c_ulong * (node // 64 + 1))()
        mask[node // 64] = 1 << (node % 64)
        rc = int(
            self._libc.syscall(
                ctypes.c_long(self._number("set_mempolicy")),
                ctypes.c_int(mode),
                ctypes.byref(mask),
                ctypes.c_ulong(64 * len(mask) + 1),
            )
        )
        if rc < 0:
            e = ctypes.get_errno()
            raise BackendError(f"set_mempolicy(node {node}): {os.strerror(e)}")

    def move_pages(self, pid: int, addrs: U64, node: int | None, flags: int) -> I32:
        """The per-page status of move_pages(2): the node, or ``-errno``.

        ``node=None`` moves nothing and reports where each page is.

        Raises:
            NoSuchProcess: ESRCH.
            AccessDenied: EPERM/EACCES.
            BackendError: an errno that is not reported per page.
        """
        pages = np.ascontiguousarray(addrs, np.uint64) & ~np.uint64(PAGE_SIZE - 1)
        n = int(pages.shape[0])
        status = np.full(n, _UNSET, np.int32)
        if n == 0:
            return status
        nodes = np.full(n, -1 if node is None else node, np.int32)
        rc = int(
            self._libc.syscall(
                ctypes.c_long(self._number("move_pages")),
                ctypes.c_int(pid),
                ctypes.c_ulong(n),
                ctypes.c_void_p(pages.ctypes.data),
                ctypes.c_void_p(None if node is None else nodes.ctypes.data),
                ctypes.c_void_p(status.ctypes.data),
                ctypes.c_int(flags),
            )
        )
        if rc < 0:
            e = ctypes.get_errno()
            if e == errno.ESRCH:
                raise NoSuchProcess(pid)
            if e in (errno.EPERM, errno.EACCES):
                raise AccessDenied(
                    f"move_pages(pid={pid})", "needs CAP_SYS_NICE/ptrace"
                )
            if e not in (errno.ENODEV, errno.EINVAL, errno.ENOMEM, errno.EFAULT):
                raise BackendError(f"move_pages(pid={pid}): {os.strerror(e)}")
            # ENODEV: target node has no memory; EINVAL: node id out of range.
            # Pages before the failing chunk have real statuses; the rest get -e.
            status[status == _UNSET] = -e
        elif rc > 0:
            # rc pages did not migrate (mm/migrate.c do_pages_move): the call
            # stopped at a batch that failed in part, whose statuses and those
            # of every later page it never writes. They stay where they were,
            # to be tried again.
            status[status == _UNSET] = -errno.EAGAIN
        return status
