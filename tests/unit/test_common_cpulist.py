"""hypertier_common.cpulist: the one parser of kernel and libvirt CPU/node lists."""

from __future__ import annotations

import pytest

from hypertier_common.cpulist import parse_cpulist


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        pytest.param("0-3,8,10-11\n", (0, 1, 2, 3, 8, 10, 11), id="ranges"),
        pytest.param("\n", (), id="cpu-less-node"),
        pytest.param("", (), id="empty"),
        pytest.param("5", (5,), id="single"),
        pytest.param(" 0 , 2-3 ", (0, 2, 3), id="spaces"),
        pytest.param("3,1,1-2", (1, 2, 3), id="unsorted-overlapping"),
        pytest.param("0-7,^3,^5-6", (0, 1, 2, 4, 7), id="libvirt-exclusion"),
    ],
)
def test_parse_cpulist(text: str, ids: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == ids


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "0-3:2", "1.5"])
def test_malformed_lists_are_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a CPU/node list"):
        parse_cpulist(text)
