"""Backend selection by name: an explicit table of ``"module:Class"`` strings.

No side-effect imports or directory scans: a backend's module is imported only
when it is chosen, so an agent runs without the libraries of the backends it
does not use (libvirt-python, for instance), and a backend's own import error
surfaces as itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar, cast

from hypertier_common.errors import ConfigError, Unsupported

__all__ = ["Registry", "instantiate"]

T = TypeVar("T")


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


class Registry(Mapping[str, str], Generic[T]):
    """An agent's backends: name -> ``"module:Class"``, built by :meth:`make`.

    ``T`` is the agent's backend Protocol; the one cast to it is here.
    """

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = dict(table)

    def __getitem__(self, name: str) -> str:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def make(self, name: str, **options: object) -> T:
        """The backend registered under ``name``, built with ``options``.

        Raises:
            ConfigError, Unsupported: as :func:`instantiate`.
        """
        return cast(T, instantiate(self, name, **options))
