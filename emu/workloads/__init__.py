"""Access generators: synthetic workloads with known hot sets and recorded traces.

The bottom layer of the emulator: a workload emits the LLC-miss stream (page
indices) of one process and depends on nothing else in emu.
"""

from emu.workloads.synthetic import (
    TRACE_PREFIX,
    WORKLOADS,
    Workload,
    make_workload,
    workload_pages,
)

__all__ = ["TRACE_PREFIX", "WORKLOADS", "Workload", "make_workload", "workload_pages"]
