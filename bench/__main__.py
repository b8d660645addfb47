"""Run every benchmark module (bench/*_bench.py), or those named on the command line."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.endswith("_bench")
    )
    wanted = [f"{a}_bench" if not a.endswith("_bench") else a for a in argv]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"bench: unknown benchmark(s) {unknown}; have {names}", file=sys.stderr)
        return 2
    for name in wanted or names:
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
