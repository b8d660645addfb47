"""Soft-dirty page tracking: which pages of a process were written since the
last re-arm (``/proc/<pid>/clear_refs`` 4, ``/proc/<pid>/pagemap`` bit 55).

Kernel docs: Documentation/admin-guide/mm/soft-dirty.rst, .../pagemap.rst.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent_guest.backend import PAGE_SIZE, Vma
from agent_guest.errors import NoSuchProcess
from hypertier_common.arrays import U64

__all__ = ["SoftDirty"]

log = logging.getLogger(__name__)

_PM_PRESENT = np.uint64(1 << 63)
_PM_SOFT_DIRTY = np.uint64(1 << 55)


class SoftDirty:
    """Soft-dirty bits of the processes under ``root``; a scan reads at most
    ``max_scan_pages`` pagemap entries per process."""

    def __init__(self, root: Path, max_scan_pages: int) -> None:
        self._root = root
        self._max_scan_pages = max_scan_pages
        self._no_rearm: set[int] = set()

    def supported(self) -> bool:
        """CONFIG_MEM_SOFT_DIRTY: after clear_refs 4, a written page reads bit 55.

        On a captured tree (``root`` not ``/``) only the pagemap's presence is
        checked: it cannot be probed.
        """
        if self._root != Path("/"):
            return (self._root / "proc/self/pagemap").exists()
        buf = mmap.mmap(-1, PAGE_SIZE)
        try:
            addr = np.frombuffer(buf, np.uint8).ctypes.data
            Path("/proc/self/clear_refs").write_text("4")
            buf[0] = 1
            with open("/proc/self/pagemap", "rb") as f:
                raw = os.pread(f.fileno(), 8, addr // PAGE_SIZE * 8)
            (entry,) = struct.unpack("<Q", raw)
            return bool(entry & (1 << 55))
        except OSError:
            return False
        finally:
            buf.close()

    def rearm(self, pids: Sequence[int]) -> None:
        """Clear soft-dirty (and write-protect) the targets' pages: clear_refs 4.

        A process that exited is skipped; one whose clear_refs cannot be written
        (another user's, without CAP_DAC_OVERRIDE) is skipped from then on.
        """
        for pid in pids:
            if pid in self._no_rearm:
                continue
            try:
                (self._root / f"proc/{pid}/clear_refs").write_text("4")
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited; the daemon drops it at its next refresh
            except PermissionError:
                # Another user's process without CAP_DAC_OVERRIDE: sample it
                # without induced faults rather than fail the whole drain.
                self._no_rearm.add(pid)
                log.warning(
                    "cannot write /proc/%d/clear_refs (needs CAP_DAC_OVERRIDE for "
                    "other users' processes); no soft-dirty tracking for it",
                    pid,
                )

    def dirty_pages(self, pid: int, vmas: Sequence[Vma]) -> U64:
        """Addresses of the present, soft-dirty pages of ``vmas`` of ``pid``.

        Raises:
            NoSuchProcess: the process is gone.
        """
        path = self._root / f"proc/{pid}/pagemap"
        found = []
        budget = self._max_scan_pages
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise NoSuchProcess(pid) from err
        try:
            for v in vmas:
                n = min(v.size_bytes // PAGE_SIZE, budget)
                if n <= 0:
                    break
                budget -= n
                raw = os.pread(fd, n * 8, v.start // PAGE_SIZE * 8)
                ent = np.frombuffer(raw, np.uint64)
                hit = np.flatnonzero(
                    ((ent & _PM_PRESENT) != 0) & ((ent & _PM_SOFT_DIRTY) != 0)
                ).astype(np.uint64)
                found.append(np.uint64(v.start) + hit * np.uint64(PAGE_SIZE))
        except ProcessLookupError as err:
            raise NoSuchProcess(pid) from err
        finally:
            os.close(fd)
        return np.concatenate(found) if found else np.empty(0, np.uint64)
