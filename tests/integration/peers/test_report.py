"""report: merging runs' cells and the table (pure; no VM)."""

from __future__ import annotations

from typing import Any

from tests.integration.peers import report


def _cell(peer: str, workload: str, steady: float) -> dict[str, Any]:
    return {"peer": peer, "workload": workload, "error": f"steady {steady}"}


def test_a_later_run_replaces_a_cell_and_order_is_canonical() -> None:
    first = {
        "cells": {
            "hypertier/scan": _cell("hypertier", "scan", 0.1),
            "none/scan": _cell("none", "scan", 0.0),
            "none/slow-hot": _cell("none", "slow-hot", 0.0),
        },
        "errors": {"a": "x"},
        "total_s": 10.0,
        "accel": {"name": "tcg"},
    }
    second = {
        "cells": {"hypertier/scan": _cell("hypertier", "scan", 0.9)},
        "errors": {},
        "total_s": 5.0,
        "accel": {"name": "tcg"},
    }
    merged = report.merge([first, second])
    assert list(merged["cells"]) == ["none/scan", "hypertier/scan", "none/slow-hot"]
    assert merged["cells"]["hypertier/scan"]["error"] == "steady 0.9"
    assert merged["errors"] == {"a": "x"}
    assert [s["cells"] for s in merged["sources"]] == [
        ["hypertier/scan", "none/scan", "none/slow-hot"],
        ["hypertier/scan"],
    ]
    text = report.table(merged)
    assert text.index("none      ") < text.index("hypertier")
