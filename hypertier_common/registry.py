"""Backend selection by name: an explicit table of ``"module:Class"`` strings.

No side-effect imports or directory scans: a backend's module is imported only
when it is chosen, so an agent runs without the libraries of the backends it
does not use (libvirt-python, for instance), and a backend's own import error
surfaces as itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from hypertier_common.errors import ConfigError, Unsupported

__all__ = ["instantiate"]


def instantiate(table: Mapping[str, str], name: str, **options: object) -> object:
    """Import the class ``table[name]`` names and construct it with ``options``.

    Raises:
        ConfigError: ``name`` is not in ``table``.
        Unsupported: a library the backend needs is not installed (a missing
            module of the backend's own package is a bug and raises as is).
    """
    if name not in table:
        raise ConfigError(f"backend {name!r} unknown; choose from {sorted(table)}")
    module, _, cls = table[name].partition(":")
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == module.split(".")[0]:
            raise
        raise Unsupported(
            f"backend {name!r}", f"it needs the Python module {err.name!r}: {err}"
        ) from err
    return getattr(found, cls)(**options)
