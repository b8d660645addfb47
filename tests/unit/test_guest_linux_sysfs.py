"""LinuxGuestBackend over synthetic /sys and /proc trees (injected root): source
detection from sysfs, perf attrs from PMU event specs, /proc and node parsers.

The trees mirror real files: Intel `cpu` PMU events/format as in Linux 6.1
arch/x86/events/intel/core.c (mem-loads "event=0xcd,umask=0x1,ldlat=3"),
node meminfo as drivers/base/node.c prints it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from agent_guest import perf_abi as abi
from agent_guest.backend import Capability, SamplerSettings, SampleSource, Tier
from agent_guest.errors import NoSuchProcess
from agent_guest.linux_backend import LinuxGuestBackend
from agent_guest.linux_channel import HostChannel
from agent_guest.linux_perf import PerfEvents
from agent_guest.linux_procfs import reserved_pages
from agent_guest.linux_syscalls import Syscalls
from tests import DATA

MAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:00 1234   /usr/bin/app
55d0c0a21000-55d0c0b00000 r-xp 00021000 fe:00 1234   /usr/bin/app
55d0c0c00000-55d0c0c10000 rw-p 00100000 fe:00 1234   /usr/bin/app
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0      [heap]
7f0000000000-7f0040000000 rw-p 00000000 00:00 0
7f0040000000-7f0041000000 rw-s 00000000 00:01 99     /dev/shm/x
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
7ffd000f0000-7ffd000f4000 r--p 00000000 00:00 0      [vvar]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""


def _put(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tree(root: Path, pmu: str = "intel") -> Path:
    dev = "sys/bus/event_source/devices"
    for name in ("software", "tracepoint", "breakpoint"):
        _put(root, f"{dev}/{name}/type", "1\n")
    if pmu == "intel":
        _put(root, f"{dev}/cpu/type", "4\n")
        _put(root, f"{dev}/cpu/events/mem-loads", "event=0xcd,umask=0x1,ldlat=3\n")
        _put(root, f"{dev}/cpu/events/mem-stores", "event=0xd0,umask=0x82\n")
        _put(root, f"{dev}/cpu/format/event", "config:0-7\n")
        _put(root, f"{dev}/cpu/format/umask", "config:8-15\n")
        _put(root, f"{dev}/cpu/format/ldlat", "config1:0-15\n")
    elif pmu == "amd":
        _put(root, f"{dev}/ibs_op/type", "11\n")
    node = "sys/devices/system/node"
    _put(
        root,
        f"{node}/node0/meminfo",
        "Node 0 MemTotal:        8388608 kB\nNode 0 MemFree:         4194304 kB\n"
        "Node 0 Active(file):     524288 kB\nNode 0 Inactive(file):  1048576 kB\n",
    )
    _put(root, f"{node}/node0/cpulist", "0-3\n")
    _put(
        root,
        f"{node}/node1/meminfo",
        "Node 1 MemTotal:       16777216 kB\nNode 1 MemFree:        16000000 kB\n",
    )
    _put(root, f"{node}/node1/cpulist", "\n")
    _put(root, "sys/devices/system/cpu/online", "0-3\n")
    _put(root, "proc/self/pagemap")
    _put(root, "proc/4242/maps", MAPS)
    _put(root, "proc/4242/statm", "100000 25600 100 10 0 20000 0\n")
    _put(root, "proc/4242/comm", "app\n")
    _put(root, "proc/4242/cmdline", "app\0--serve\0")
    _put(root, "proc/4242/cgroup", "0::/system.slice/app.service\n")
    _put(root, "proc/7/statm", "0 0 0 0 0 0 0\n")  # a kernel thread
    _put(
        root,
        "proc/vmstat",
        "nr_free_pages 100\nnr_tlb_remote_flush 5\nnr_tlb_local_flush_all 7\n"
        "pgmigrate_success 9\nnuma_hint_faults 11\n",
    )
    _put(
        root,
        "sys/kernel/tracing/events/exceptions/page_fault_user/format",
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
        "\tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;\n",
    )
    _put(root, "sys/kernel/tracing/events/exceptions/page_fault_user/id", "190\n")
    return root


def _backend(tmp_path: Path, pmu: str = "intel") -> LinuxGuestBackend:
    return LinuxGuestBackend(
        root=_tree(tmp_path, pmu), channel_path=str(tmp_path / "no")
    )


def _perf(
    tmp_path: Path, pmu: str = "intel", fault_event: str = "software"
) -> PerfEvents:
    root = _tree(tmp_path, pmu)
    return PerfEvents(root, root / "sys/kernel/tracing", fault_event, Syscalls())


def test_intel_pmu_with_mem_loads_offers_pebs(tmp_path: Path) -> None:
    caps = _backend(tmp_path).capabilities()
    assert Capability.PEBS in caps
    assert Capability.IBS not in caps


def test_amd_ibs_op_pmu_offers_ibs(tmp_path: Path) -> None:
    b = _backend(tmp_path, "amd")
    assert Capability.IBS in b.capabilities()
    assert "mem-loads" in b.unavailable()[Capability.PEBS]


def test_no_pmu_offers_the_fallbacks_and_says_why_not_pebs(tmp_path: Path) -> None:
    b = _backend(tmp_path, "none")
    caps = b.capabilities()
    assert {Capability.PAGE_FAULT_SAMPLING, Capability.TRACEPOINTS} <= caps
    assert Capability.PEBS not in caps
    assert "breakpoint" in b.unavailable()[Capability.PEBS]  # lists what exists
    assert Capability.HOST_CHANNEL not in caps
    assert "does not exist" in b.unavailable()[Capability.HOST_CHANNEL]


def test_pebs_events_come_from_the_sysfs_specs_with_our_ldlat(tmp_path: Path) -> None:
    specs = _perf(tmp_path).event_specs(
        SamplerSettings(SampleSource.PEBS, 997, ldlat_cycles=64)
    )
    assert len(specs) == 2  # loads and stores
    fields = [struct.unpack_from("<IIQQQQQIIQ", s.attr) for s in specs]
    loads, stores = fields
    assert (loads[0], loads[2], loads[3], loads[9]) == (4, 0x1CD, 997, 64)
    assert (stores[2], stores[9]) == (0x82D0, 0)
    assert (loads[6] >> abi.PRECISE_IP_SHIFT) & 3 == 2
    assert specs[0].sample_type & abi.SAMPLE_WEIGHT


def test_ibs_period_is_a_multiple_of_16(tmp_path: Path) -> None:
    (spec,) = _perf(tmp_path, "amd").event_specs(
        SamplerSettings(SampleSource.IBS, 1000)
    )
    type_, _, _, period = struct.unpack_from("<IIQQ", spec.attr)
    assert (type_, period % 16, spec.sample_type & abi.SAMPLE_ADDR) == (
        11,
        0,
        abi.SAMPLE_ADDR,
    )


def test_tracepoint_fault_event_reads_the_address_offset_from_format(
    tmp_path: Path,
) -> None:
    perf = _perf(tmp_path, "none", fault_event="tracepoint")
    (spec,) = perf.event_specs(SamplerSettings(SampleSource.PAGE_FAULT, 1))
    type_, _, config = struct.unpack_from("<IIQ", spec.attr)
    assert (type_, config, spec.raw_addr_offset) == (abi.TYPE_TRACEPOINT, 190, 8)
    assert spec.sample_type & abi.SAMPLE_RAW


def test_nodes_with_cpus_are_fast_and_cpuless_nodes_slow(tmp_path: Path) -> None:
    nodes = _backend(tmp_path).numa_nodes()
    assert [(n.node, n.tier, n.has_cpus) for n in nodes] == [
        (0, Tier.FAST, True),
        (1, Tier.SLOW, False),
    ]
    assert nodes[0].total_bytes == 8 << 30
    assert nodes[0].free_bytes == 4 << 30
    # the page cache, active and inactive
    assert [n.reclaimable_bytes for n in nodes] == [3 << 29, 0]


ZONEINFO = (DATA / "proc-6.12" / "zoneinfo").read_text()


def test_kernel_reserve_is_each_zones_low_mark_and_protection() -> None:
    # node 0: DMA all of its 3,840 free pages (21 + 14,411 exceeds them), DMA32
    # 4,420 + 11,392, Normal 16,677, Movable none (no managed pages); node 1:
    # below its mark, so all of its 100 free pages
    assert reserved_pages(ZONEINFO.encode()) == {
        0: 3840 + 4420 + 11392 + 16677,
        1: 100,
    }


def test_nodes_carry_the_kernel_reserve_from_zoneinfo(tmp_path: Path) -> None:
    _tree(tmp_path)
    _put(tmp_path, "proc/zoneinfo", ZONEINFO)
    nodes = LinuxGuestBackend(root=tmp_path, channel_path="no").numa_nodes()
    assert [n.reserved_bytes for n in nodes] == [36329 * 4096, 100 * 4096]
    # without zoneinfo: no reserve known
    (tmp_path / "proc/zoneinfo").unlink()
    nodes = LinuxGuestBackend(root=tmp_path, channel_path="no").numa_nodes()
    assert [n.reserved_bytes for n in nodes] == [0, 0]


def test_vmas_are_the_private_writable_mappings(tmp_path: Path) -> None:
    vmas = _backend(tmp_path).vmas(4242)
    assert [(hex(v.start), v.path) for v in vmas] == [
        ("0x55d0c0c00000", "/usr/bin/app"),
        ("0x55d0c1000000", "[heap]"),
        ("0x7f0000000000", ""),
        ("0x7ffd00000000", "[stack]"),
    ]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"/tmp/m\xff\xfe.bin", id="not-utf8"),
        pytest.param("/tmp/m\u2028\x85.bin".encode(), id="unicode-line-breaks"),
    ],
)
def test_vmas_keep_a_mapped_file_name_with_any_bytes(
    tmp_path: Path, name: bytes
) -> None:
    # Linux file names are bytes; proc(5) prints them unescaped except for "\n".
    backend = _backend(tmp_path)
    line = b"7f1000000000-7f1000100000 rw-p 00000000 fe:00 77   " + name + b"\n"
    (tmp_path / "proc/4242/maps").write_bytes(MAPS.encode() + line)
    vmas = backend.vmas(4242)
    assert len(vmas) == 5
    assert (hex(vmas[-1].start), hex(vmas[-1].end)) == (
        "0x7f1000000000",
        "0x7f1000100000",
    )
    assert os.fsencode(vmas[-1].path) == name


@pytest.mark.parametrize(
    "name", [pytest.param("comm", id="comm"), pytest.param("cgroup", id="cgroup")]
)
def test_process_with_a_non_utf8_name_is_still_listed(
    tmp_path: Path, name: str
) -> None:
    backend = _backend(tmp_path)
    path = tmp_path / "proc/4242" / name
    path.write_bytes(path.read_bytes().replace(b"app", b"a\xffp"))
    (p,) = backend.processes()
    assert p.pid == 4242
    assert "a\ufffdp" in (p.comm if name == "comm" else p.cgroup)


def test_vmas_of_a_vanished_process_raise_no_such_process(tmp_path: Path) -> None:
    with pytest.raises(NoSuchProcess):
        _backend(tmp_path).vmas(999)


def test_processes_skip_kernel_threads(tmp_path: Path) -> None:
    (p,) = _backend(tmp_path).processes()
    assert (p.pid, p.comm, p.rss_bytes) == (4242, "app", 25600 * 4096)
    assert p.cmdline == "app --serve"
    assert p.cgroup == "/system.slice/app.service"


def test_counters_keep_tlb_migration_and_numa_counters(tmp_path: Path) -> None:
    assert _backend(tmp_path).counters() == {
        "nr_tlb_remote_flush": 5,
        "nr_tlb_local_flush_all": 7,
        "pgmigrate_success": 9,
        "numa_hint_faults": 11,
    }


def test_a_full_host_channel_never_tears_a_line(tmp_path: Path) -> None:
    """A FIFO stands in for the virtio-serial port: fill it, drain it, compare."""
    import os

    from hypertier_common.errors import BackendError

    fifo = tmp_path / "port"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    b = HostChannel(fifo)
    lines = [(b"%05d" % i) * 200 + b"\n" for i in range(200)]  # 1001 bytes each
    sent = []
    try:
        for line in lines[:120]:  # 64 KiB fill the pipe, 56 KiB wait
            b.send(line)
            sent.append(line)

        def send_all(more: list[bytes]) -> None:
            for line in more:
                b.send(line)
                sent.append(line)

        with pytest.raises(BackendError, match="message dropped"):
            send_all(lines[120:])
        assert len(sent) < 200
        got = bytearray()
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                chunk = b""
            if not chunk:
                if not b.unsent_bytes:
                    break
                b.send(b"")  # flush what waits
                continue
            got += chunk
        assert bytes(got) == b"".join(sent)
    finally:
        b.close()
        os.close(reader)


class _PartialMoveLibc:
    """A libc whose move_pages(2) writes the first ``done`` statuses (node 1)
    and returns ``rc``, as the kernel does when a batch fails in part."""

    def __init__(self, done: int, rc: int) -> None:
        self.done, self.rc = done, rc

    def syscall(self, nr: object, pid: object, n: object, *rest: object) -> int:
        status = rest[2]
        assert isinstance(status, ctypes.c_void_p)
        assert status.value is not None
        assert isinstance(n, ctypes.c_ulong)
        out = (ctypes.c_int32 * n.value).from_address(status.value)
        for i in range(self.done):
            out[i] = 1
        return self.rc


def test_pages_a_partly_failed_move_never_tried_are_to_try_again() -> None:
    sys_ = Syscalls()
    sys_._libc = _PartialMoveLibc(done=3, rc=5)  # type: ignore[assignment]
    addrs = np.arange(8, dtype=np.uint64) * np.uint64(4096)
    status = sys_.move_pages(1, addrs, 1, 0)
    assert status.tolist() == [1, 1, 1] + [-errno.EAGAIN] * 5


# /proc/<pid>/numa_maps lines as Linux 6.1 prints them: base pages, a THP
# mapping (counted in base pages), a hugetlb mapping (counted in huge pages)
# and a mapping with nothing resident.
NUMA_MAPS = b"""\
55d0c0c00000 default file=/usr/bin/app mapped=10 active=0 N0=10 kernelpagesize_kB=4
55d0c1000000 default heap anon=300 dirty=300 N0=200 N1=100 kernelpagesize_kB=4
7f0000000000 default anon=1024 dirty=1024 N1=1024 kernelpagesize_kB=4
7f4000000000 default file=/dev/hugepages/x huge dirty=3 N0=2 N1=1 kernelpagesize_kB=2048
7ffd00000000 default stack
"""


def test_node_bytes_sum_numa_maps_in_each_mappings_page_size(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    (tmp_path / "proc/4242/numa_maps").write_bytes(NUMA_MAPS)
    assert backend.node_bytes(4242) == {
        0: 210 * 4096 + 2 * (2 << 20),
        1: 1124 * 4096 + 1 * (2 << 20),
    }


def test_node_bytes_of_a_vanished_process_raise_no_such_process(
    tmp_path: Path,
) -> None:
    with pytest.raises(NoSuchProcess):
        _backend(tmp_path).node_bytes(999)
