"""The placement policies compared on the emulator, one module per design.

``make_policy(name)`` builds one from the table :data:`POLICIES` (name ->
``module:Class``, imported on use: hypertier brings both agents with it).
Design notes and sources: docs/baselines.md.
"""

from __future__ import annotations

import importlib

from emu.policies.base import ORACLE_NAMES, POLICY_NAMES, Policy, VmSpec

__all__ = [
    "ORACLE_NAMES",
    "POLICIES",
    "POLICY_NAMES",
    "Policy",
    "VmSpec",
    "make_policy",
]

POLICIES = {
    "none": "emu.policies.first_touch:NonePolicy",
    "all-fast": "emu.policies.first_touch:AllFastPolicy",
    "tpp-host": "emu.policies.tpp:HostTppPolicy",
    "tpp-guest": "emu.policies.tpp:TppGuestPolicy",
    "vtmm": "emu.policies.vtmm:VtmmPolicy",
    "memtis": "emu.policies.memtis:MemtisPolicy",
    "hemem": "emu.policies.hemem:HememPolicy",
    "hypertier": "emu.policies.hypertier:HyperTierPolicy",
    "oracle": "emu.policies.oracle:OraclePolicy",
    "oracle-phase": "emu.policies.oracle:OraclePhasePolicy",
}


def make_policy(name: str, **options: object) -> Policy:
    """A fresh policy by its name (:data:`POLICY_NAMES` or :data:`ORACLE_NAMES`).

    Raises:
        ValueError: the name is unknown.
    """
    if name not in POLICIES:
        raise ValueError(
            f"policy {name!r} unknown; choose from {[*POLICY_NAMES, *ORACLE_NAMES]}"
        )
    module, _, cls = POLICIES[name].partition(":")
    policy: Policy = getattr(importlib.import_module(module), cls)(**options)
    return policy
