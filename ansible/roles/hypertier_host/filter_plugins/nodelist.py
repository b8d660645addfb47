"""Ansible filter: parse a kernel node/CPU list ("0-2,4") into a list of ints.

Format: https://www.kernel.org/doc/html/latest/admin-guide/cputopology.html
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

__all__ = ["FilterModule", "hypertier_nodelist"]


def hypertier_nodelist(text: str) -> list[int]:
    """Expand "0-2,4" to [0, 1, 2, 4]; an empty string is an empty list.

    Raises:
        AnsibleFilterError: text is not a node list.
    """
    nodes: list[int] = []
    for part in str(text).strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            nodes.extend(range(int(first), int(last or first) + 1))
        except ValueError as err:
            raise AnsibleFilterError(f"not a node list: {text!r}") from err
    return nodes


class FilterModule:
    """Registers the filter with Ansible."""

    def filters(self) -> dict[str, object]:
        return {"hypertier_nodelist": hypertier_nodelist}
