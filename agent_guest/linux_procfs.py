"""What the guest agent reads from /proc and /sys: NUMA nodes and their memory
(/sys/devices/system/node), online CPUs, processes, writable mappings
(/proc/<pid>/maps), a process's memory per node (/proc/<pid>/numa_maps) and the
kernel's migration and TLB counters (/proc/vmstat).

Every function takes ``root``, which prefixes the paths (tests use captured
trees). Man page: proc(5); Documentation/ABI/stable/sysfs-devices-node.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent_guest.backend import PAGE_SIZE, NumaNode, ProcessInfo, Tier, Vma
from agent_guest.errors import NoSuchProcess
from hypertier_common.cpulist import parse_cpulist
from hypertier_common.errors import AccessDenied, BackendError

__all__ = [
    "node_bytes",
    "numa_maps_bytes",
    "numa_nodes",
    "online_cpus",
    "processes",
    "reserved_pages",
    "vmas",
    "vmstat_counters",
]

_SKIP_VMAS = ("[vsyscall]", "[vvar]", "[vdso]", "[vvar_vclock]")
_MEMINFO = re.compile(
    rb"Node \d+ (MemTotal|MemFree|Active\(file\)|Inactive\(file\)):\s+(\d+) kB"
)
# One zone of /proc/zoneinfo (mm/vmstat.c: zoneinfo_show_print): its node, free
# pages, low watermark, managed pages and lowmem protection, in that order.
_ZONE = re.compile(
    rb"^Node (\d+), zone +\S+\n"
    rb"(?:.*\n)*?  pages free +(\d+)\n"
    rb"(?:.*\n)*? +low +(\d+)\n"
    rb"(?:.*\n)*? +managed +(\d+)\n"
    rb"(?:.*\n)*? +protection: \(([\d, ]*)\)",
    re.MULTILINE,
)
# One mapping's pages per node and the page size they are counted in
# (fs/proc/task_mmu.c: show_numa_map; a hugetlb page counts once, in its size).
_NUMA_PAGES = re.compile(rb"\bN(\d+)=(\d+)")
_NUMA_KPAGE = re.compile(rb"\bkernelpagesize_kB=(\d+)")
_VMSTAT_PREFIXES = ("nr_tlb_", "pgmigrate_", "numa_", "pgpromote_", "pgdemote_")


def reserved_pages(zoneinfo: bytes) -> dict[int, int]:
    """Free pages per node that page migration into it cannot take.

    move_pages(2) allocates its target pages as movable user memory on that node
    only (``GFP_HIGHUSER_MOVABLE | __GFP_THISNODE``): a zone gives them while its
    free pages stay above its watermark plus its protection from allocations
    that could have used a higher zone (``lowmem_reserve``, the last column of
    ``protection``). The low watermark is used: below it an allocation wakes
    kswapd, which reclaims the node's page cache and reclaimable slab up to the
    high mark, so promotions that fill the node to its low mark make room for
    the next ones out of what the kernel can reclaim, and never reach the min
    mark where they would fail. Per zone the reserve is at most the zone's free
    pages; zones without managed pages have none.
    """
    out: dict[int, int] = {}
    # One zone at a time, up to its per-CPU pagesets (on a machine of many CPUs
    # most of the file): 0.25 ms for 280 KB (256 CPUs, 2 nodes), 10x less than
    # one pattern over the whole text.
    for part in zoneinfo.split(b"\nNode "):
        if not part.startswith(b"Node "):
            part = b"Node " + part
        end = part.find(b"pagesets")
        m = _ZONE.match(part, 0, end if end >= 0 else len(part))
        if m is None:
            continue
        node, free, low, managed, prot = m.groups()
        if int(managed) == 0:
            continue
        marks = [int(x) for x in prot.replace(b",", b" ").split()]
        keep = int(low) + (marks[-1] if marks else 0)
        out[int(node)] = out.get(int(node), 0) + min(int(free), keep)
    return out


def numa_nodes(root: Path) -> list[NumaNode]:
    """The NUMA nodes: nodes with CPUs are the fast tier, CPU-less ones slow.

    ``reserved_bytes`` comes from /proc/zoneinfo (:func:`reserved_pages`); 0
    where it cannot be read.

    Raises:
        BackendError: a node's meminfo or cpulist cannot be read.
    """
    base = root / "sys/devices/system/node"
    try:
        reserved = reserved_pages((root / "proc/zoneinfo").read_bytes())
    except OSError:
        reserved = {}
    out = []
    for d in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            info = dict(_MEMINFO.findall((d / "meminfo").read_bytes()))
            cpus = parse_cpulist((d / "cpulist").read_text())
        except (OSError, ValueError) as err:
            raise BackendError(f"cannot read {d}: {err}") from err
        total = int(info.get(b"MemTotal", b"0")) * 1024
        free = int(info.get(b"MemFree", b"0")) * 1024
        cache = sum(
            int(info.get(k, b"0")) for k in (b"Active(file)", b"Inactive(file)")
        )
        node = int(d.name[4:])
        out.append(
            NumaNode(
                node=node,
                tier=Tier.FAST if cpus else Tier.SLOW,
                total_bytes=total,
                free_bytes=free,
                has_cpus=bool(cpus),
                reserved_bytes=min(free, reserved.get(node, 0) * PAGE_SIZE),
                reclaimable_bytes=cache * 1024,
            )
        )
    return out


def online_cpus(root: Path) -> tuple[int, ...]:
    return parse_cpulist((root / "sys/devices/system/cpu/online").read_text())


def processes(root: Path) -> list[ProcessInfo]:
    """User processes (resident set above zero), by pid; unreadable ones skipped."""
    out = []
    for d in (root / "proc").glob("[0-9]*"):
        try:
            statm = (d / "statm").read_text().split()
            rss = int(statm[1]) * PAGE_SIZE
            if rss == 0:
                continue  # kernel threads
            # comm, cmdline and cgroup paths are bytes, not always UTF-8 (an
            # executable or cgroup named in Latin-1): decode for display.
            comm = (d / "comm").read_bytes().strip()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            cgroup = (d / "cgroup").read_bytes().strip().rpartition(b":")[2]
        except (OSError, IndexError, ValueError):
            continue  # exited or unreadable: not a candidate
        out.append(
            ProcessInfo(
                int(d.name),
                comm.decode(errors="replace"),
                rss,
                cmdline.decode(errors="replace"),
                cgroup.decode(errors="replace"),
            )
        )
    return sorted(out, key=lambda p: p.pid)


def _read_pid_file(root: Path, pid: int, name: str) -> bytes:
    """/proc/<pid>/<name> (a file that needs ptrace access to the process).

    Raises:
        NoSuchProcess: the process is gone.
        AccessDenied: no ptrace access to it.
    """
    try:
        return (root / f"proc/{pid}/{name}").read_bytes()
    except (FileNotFoundError, ProcessLookupError) as err:
        raise NoSuchProcess(pid) from err
    except PermissionError as err:
        raise AccessDenied(f"/proc/{pid}/{name}", "needs ptrace access") from err


def numa_maps_bytes(text: bytes) -> dict[int, int]:
    """Resident bytes per node from the text of a /proc/<pid>/numa_maps."""
    out: dict[int, int] = {}
    for line in text.split(b"\n"):
        size = _NUMA_KPAGE.search(line)
        unit = int(size.group(1)) * 1024 if size else PAGE_SIZE
        for node, pages in _NUMA_PAGES.findall(line):
            out[int(node)] = out.get(int(node), 0) + int(pages) * unit
    return out


def node_bytes(root: Path, pid: int) -> dict[int, int]:
    """``pid``'s resident bytes per NUMA node (/proc/<pid>/numa_maps). The
    kernel walks the process's page tables to answer: about 50 ns a page.

    Raises:
        NoSuchProcess: the process is gone.
        AccessDenied: no ptrace access to it.
    """
    return numa_maps_bytes(_read_pid_file(root, pid, "numa_maps"))


def vmas(root: Path, pid: int) -> list[Vma]:
    """Private writable mappings (heap, anonymous, data) from /proc/pid/maps.

    A mapped file's name is bytes that need not be UTF-8; ``Vma.path`` holds
    it as :func:`os.fsdecode` does (``os.fsencode(path)`` gives the bytes).

    Raises:
        NoSuchProcess: the process is gone.
        AccessDenied: no ptrace access to it.
    """
    text = os.fsdecode(_read_pid_file(root, pid, "maps"))
    out = []
    # Only "\n" ends a line: splitlines() would also split a name at U+2028.
    for line in text.split("\n"):
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        span, perms = parts[0], parts[1]
        path = parts[5] if len(parts) == 6 else ""
        if perms[1] != "w" or perms[3] != "p" or path in _SKIP_VMAS:
            continue
        lo, _, hi = span.partition("-")
        out.append(Vma(int(lo, 16), int(hi, 16), perms, path))
    return out


def vmstat_counters(root: Path) -> dict[str, int]:
    """The TLB, migration, NUMA-balancing and tiering counters of /proc/vmstat.

    Raises:
        BackendError: /proc/vmstat cannot be read.
    """
    try:
        text = (root / "proc/vmstat").read_text()
    except OSError as err:
        raise BackendError(f"cannot read /proc/vmstat: {err}") from err
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(_VMSTAT_PREFIXES):
            out[name] = int(value)
    return out
