"""The agents reach the emulator only through their backend registries: the
"emu" entries must build the emulated backends over a World."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent_guest import backend as guest_backend
from agent_host import backend as host_backend
from emu.backends.guest import EmuGuestBackend
from emu.backends.host import EmuHostBackend
from emu.machine import World
from hypertier_common.errors import ConfigError
from hypertier_common.registry import Registry


def test_guest_registry_builds_the_emulated_guest_backend() -> None:
    world = World(1 << 30, 1 << 31)
    world.add_vm("vm", 1, 16 << 20, 64 << 20)
    backend = guest_backend.BACKENDS.make("emu", world=world, vm="vm")
    assert isinstance(backend, EmuGuestBackend)
    assert [n.node for n in backend.numa_nodes()] == [0, 1]


def test_host_registry_builds_the_emulated_host_backend() -> None:
    world = World(1 << 30, 1 << 31)
    world.add_vm("vm", 1, 16 << 20, 64 << 20)
    backend = host_backend.BACKENDS.make("emu", world=world)
    assert isinstance(backend, EmuHostBackend)
    assert [d.vm for d in backend.domains()] == ["vm"]


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        pytest.param(guest_backend.BACKENDS, "['emu', 'linux']", id="guest"),
        pytest.param(host_backend.BACKENDS, "['emu', 'libvirt']", id="host"),
    ],
)
def test_unknown_backend_name_is_a_config_error_naming_the_choices(
    registry: Registry[Any], names: str
) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"'xen' unknown; choose from {names}")
    ):
        registry.make("xen")
