"""The ht-memnode TCG plugin: build it, pass it to QEMU, map its counts to guest nodes.

``qemu/ht-memnode.c`` counts every guest load and store by the address QEMU 7.2's
``qemu_plugin_hwaddr_phys_addr()`` reports. In QEMU 5.1 to 8.0 that is not the
guest-physical address for RAM: it is ``block->offset + offset + block->mr->addr``
(the RAM block's offset in QEMU's ram_addr space, plus the offset inside the block,
plus the memory region's address inside its parent), fixed upstream in 8.1. Each
RAM block therefore covers the plugin-address range ``[R + A, R + A + size)``, with
R from the monitor's ``info ramblock`` and A from ``info mtree``; which guest node a
block belongs to comes from the memory backend (``-numa node,memdev=ram-nodeN``, as
libvirt names them) or ``info memory-devices`` (virtio-mem). Ranges of different
blocks can overlap; a bucket that falls in blocks of two nodes is counted as
``ambiguous``, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PLUGIN_SOURCE",
    "Classified",
    "PluginRange",
    "build_plugin",
    "classify",
    "libvirt_commandline",
    "parse_memory_devices",
    "parse_mtree_addrs",
    "parse_ramblocks",
    "plugin_ranges",
    "qemu_plugin_support",
]

PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu" / "ht-memnode.c"
_CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
_NODE_MEMDEV = re.compile(r"^ram-node(\d+)$")
_MTREE_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<start>[0-9a-f]{16})-(?P<end>[0-9a-f]{16}) "
    r"\(prio -?\d+, (?P<kind>[\w/-]+)\): (?P<name>.+)$"
)


def qemu_plugin_support(qemu: str = "qemu-system-x86_64") -> str | None:
    """None if ``qemu`` accepts ``-plugin``, else why not."""
    path = shutil.which(qemu)
    if path is None:
        return f"{qemu} not installed (Debian package qemu-system-x86)"
    proc = subprocess.run(
        [path, "-plugin", "help", "-M", "none", "-display", "none"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # A QEMU built with plugins tries to dlopen "help"; one without rejects the option.
    if "invalid option" in proc.stderr or "not supported" in proc.stderr:
        return f"{path} was built without TCG plugin support: {proc.stderr.strip()}"
    return None


def build_plugin(cache: Path) -> Path:
    """Compile ht-memnode.so into ``cache`` (reused while the source is unchanged).

    Raises:
        RuntimeError: gcc missing or the compile failed (with the compiler output).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: install Debian's gcc (scripts/setup does)")
    key = hashlib.sha256(PLUGIN_SOURCE.read_bytes() + " ".join(_CFLAGS).encode())
    so = cache / f"ht-memnode-{key.hexdigest()[:16]}.so"
    if so.is_file():
        return so
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ht-memnode-", dir=cache))
    try:
        proc = subprocess.run(
            [gcc, *_CFLAGS, "-o", str(tmp / "p.so"), str(PLUGIN_SOURCE), "-lpthread"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"gcc ht-memnode.c failed:\n{proc.stderr.strip()}")
        (tmp / "p.so").chmod(0o755)
        os.replace(tmp / "p.so", so)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return so


def plugin_arg(so: Path, out: Path, interval_ms: int = 1000) -> str:
    """The value of QEMU's ``-plugin`` option."""
    return f"{so},out={out},interval_ms={interval_ms}"


def libvirt_commandline(so: Path, out: Path, interval_ms: int = 1000) -> str:
    """The ``<qemu:commandline>`` element that loads the plugin into a libvirt domain
    (the domain element needs
    ``xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'``). QEMU runs as
    libvirt's qemu user: ``so`` must be readable and ``out``'s directory writable
    by it."""
    return (
        "<qemu:commandline>"
        "<qemu:arg value='-plugin'/>"
        f"<qemu:arg value='{plugin_arg(so, out, interval_ms)}'/>"
        "</qemu:commandline>"
    )


@dataclass(frozen=True)
class RamBlock:
    name: str  # the memory region's name: last component of the block's name
    offset: int  # R: the block's offset in ram_addr space
    size: int


def parse_ramblocks(text: str) -> list[RamBlock]:
    """Blocks of HMP ``info ramblock`` (Block Name, PSize, Offset, Used, Total)."""
    blocks: list[RamBlock] = []
    for line in text.splitlines():
        m = re.match(
            r"^\s*(\S+)\s+\d+ \w?i?B\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+",
            line,
        )
        if m:
            name = m.group(1).rsplit("/", 1)[-1]
            blocks.append(RamBlock(name, int(m.group(2), 16), int(m.group(3), 16)))
    return blocks


def parse_mtree_addrs(text: str) -> dict[str, int]:
    """Memory region name -> its address inside its parent (``mr->addr``), from HMP
    ``info mtree``: a region's start minus its enclosing region's start, for the
    first line naming a ram or rom region."""
    addrs: dict[str, int] = {}
    stack: list[tuple[int, int]] = []  # (indent, start) of enclosing regions
    for line in text.splitlines():
        if line.startswith(("address-space", "memory-region", "FlatView")):
            stack = []
            continue
        m = _MTREE_LINE.match(line)
        if m is None:
            continue
        indent, start = len(m.group("indent")), int(m.group("start"), 16)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else 0
        name = m.group("name")
        if m.group("kind") in ("ram", "rom") and " " not in name:
            addrs.setdefault(name, start - parent)
        stack.append((indent, start))
    return addrs


@dataclass(frozen=True)
class MemoryDevice:
    node: int
    plugged: int  # bytes plugged now (virtio-mem "size")


def parse_memory_devices(text: str) -> dict[str, MemoryDevice]:
    """Memory backend id -> (guest node, plugged bytes), from HMP
    ``info memory-devices`` (virtio-mem and pc-dimm)."""
    out: dict[str, MemoryDevice] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        if "memdev" in fields and "node" in fields:
            size = int(fields.get("size", "0"), 0)
            memdev = fields["memdev"].rsplit("/", 1)[-1]
            out[memdev] = MemoryDevice(int(fields["node"], 0), size)

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Memory device"):
            flush()
            fields = {}
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flush()
    return out


@dataclass(frozen=True)
class PluginRange:
    start: int
    end: int
    block: str
    node: int | None  # None: not guest RAM of a node (ROM, firmware blobs)


def plugin_ranges(
    ramblock_text: str,
    mtree_text: str,
    memory_devices_text: str = "",
    node_of_memdev: Mapping[str, int] | None = None,
) -> list[PluginRange]:
    """Plugin-address ranges of every RAM block whose region is in the memory tree.

    A memory device (virtio-mem) counts with its plugged size from the start of
    its region: Linux's virtio-mem driver plugs memory blocks in ascending and
    unplugs them in descending address order, so its plugged part is a prefix
    (exactly, unless subblocks were unplugged from the middle under pressure).
    """
    devices = parse_memory_devices(memory_devices_text)
    addrs = parse_mtree_addrs(mtree_text)
    ranges: list[PluginRange] = []
    for block in parse_ramblocks(ramblock_text):
        if block.name not in addrs:
            continue  # not mapped into the guest (fw_cfg blobs)
        size = block.size
        node = (node_of_memdev or {}).get(block.name)
        device = devices.get(block.name)
        if device is not None:
            size = min(size, device.plugged)
            node = device.node if node is None else node
        m = _NODE_MEMDEV.match(block.name)
        if node is None and m:
            node = int(m.group(1))
        if size == 0:
            continue
        start = block.offset + addrs[block.name]
        ranges.append(PluginRange(start, start + size, block.name, node))
    return sorted(ranges, key=lambda r: r.start)


@dataclass(frozen=True)
class Classified:
    nodes: dict[int, int]  # accesses per guest node
    other: int  # to RAM blocks of no node (ROM)
    ambiguous: int  # buckets inside blocks of more than one node
    unmapped: int  # buckets inside no known block

    @property
    def total(self) -> int:
        return sum(self.nodes.values()) + self.other + self.ambiguous + self.unmapped

    def node_share(self, node: int) -> float:
        """Share of node-attributed accesses that went to ``node``."""
        attributed = sum(self.nodes.values())
        return self.nodes.get(node, 0) / attributed if attributed else 0.0


def classify(
    buckets: Mapping[str, int] | Mapping[int, int],
    bucket_bytes: int,
    ranges: Iterable[PluginRange],
) -> Classified:
    """Attribute the plugin's bucket counts to guest nodes."""
    ranges = list(ranges)
    nodes: dict[int, int] = {}
    other = ambiguous = unmapped = 0
    for key, count in buckets.items():
        lo = int(key) * bucket_bytes
        hi = lo + bucket_bytes
        hits = [r for r in ranges if r.start < hi and lo < r.end]
        owners = {r.node for r in hits}
        if not hits:
            unmapped += count
        elif len(owners) > 1:
            ambiguous += count
        elif None in owners:
            other += count
        else:
            (node,) = owners
            assert node is not None
            nodes[node] = nodes.get(node, 0) + count
    return Classified(nodes, other, ambiguous, unmapped)


def _hmp(sock: Path, *commands: str, timeout_s: float = 30) -> list[str]:
    """Run HMP commands on a ``-monitor unix:PATH,server,nowait`` socket."""
    outputs: list[str] = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock))

        def until_prompt() -> str:
            data = b""
            while not data.endswith(b"(qemu) "):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("QEMU monitor closed")
                data += chunk
            return data.decode(errors="replace")

        until_prompt()
        for command in commands:
            s.sendall(command.encode() + b"\n")
            text = until_prompt()
            # the monitor echoes the command line; drop it and the prompt
            body = text.split("\n", 1)[1] if "\n" in text else ""
            outputs.append(body.rsplit("(qemu) ", 1)[0].replace("\r", ""))
    return outputs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written
    return out


def monitor_layout(sock: Path) -> list[PluginRange]:
    """The plugin-address ranges of a running QEMU, from its HMP monitor."""
    ramblock, mtree, devices = _hmp(
        sock, "info ramblock", "info mtree", "info memory-devices"
    )
    return plugin_ranges(ramblock, mtree, devices)


def wait_for(path: Path, timeout_s: float) -> bool:
    """Whether ``path`` appeared within ``timeout_s`` (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return path.exists()
