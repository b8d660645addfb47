"""Benchmarks: each module's ``main()`` prints one JSON line per figure.

Convention: ``{"metric": "<name>", "value": <number>, "unit": "<unit>"}``.
``python -m bench`` runs every ``bench/*_bench.py`` module; ``python -m bench emu``
runs only ``bench/emu_bench.py``.
"""

from __future__ import annotations

import json

__all__ = ["emit"]


def emit(metric: str, value: float, unit: str) -> None:
    """Print one figure as a JSON line."""
    print(
        json.dumps({"metric": metric, "value": round(value, 6), "unit": unit}),
        flush=True,
    )
