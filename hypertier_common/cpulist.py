"""Parse the kernel's and libvirt's CPU / NUMA node lists (``0-3,8,10-11``).

Kernel format: https://docs.kernel.org/admin-guide/cputopology.html; libvirt's
``nodeset``/``cpuset`` attributes add exclusions (``0-7,^3``):
https://libvirt.org/formatdomain.html#numa-node-tuning.
"""

from __future__ import annotations

__all__ = ["parse_cpulist"]


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The ids in ``text``, ascending and distinct; blank text is no ids.

    ``"0-3,8"`` -> (0, 1, 2, 3, 8); ``"0-3,^2"`` -> (0, 1, 3).

    Raises:
        ValueError: ``text`` is not such a list (the message quotes it).
    """
    include: set[int] = set()
    exclude: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        into = include
        if part.startswith("^"):
            into, part = exclude, part[1:]
        lo, sep, hi = part.partition("-")
        if not lo.isdecimal() or (sep and not hi.isdecimal()):
            raise ValueError(f"not a CPU/node list: {text!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"not a CPU/node list (range {part}): {text!r}")
        into.update(range(first, last + 1))
    return tuple(sorted(include - exclude))
