"""Strict TOML configuration files (tomllib): frozen dataclasses in, TOML out.

One semantics for both agents. A config is a frozen dataclass whose fields are
tables (nested dataclasses), tables of tables (``Mapping[str, <dataclass>]``)
or values: ``bool``, ``int``, ``float`` (an integer is accepted; NaN and
infinities are not), ``str`` and ``tuple[<value>, ...]`` (a TOML array; lists
are never kept, so configs stay hashable and immutable). Unknown keys and
wrong types stop loading with a :class:`ConfigError` that names the file and
the full key (``guest.toml: mover.batch_pgaes: unknown key``); so do the
bounds a :class:`Table` declares with its fields' types
(``Annotated[int, Bound(ge=1)]``) and its own :meth:`Table.validate` rules.
:func:`dumps` writes the effective values back as TOML that :func:`loads`
accepts, each bounded key with its bounds in a comment.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypertier_common.errors import ConfigError

__all__ = [
    "NON_NEGATIVE",
    "POSITIVE",
    "UNIT",
    "Bound",
    "Table",
    "bounds",
    "dumps",
    "load",
    "loads",
    "require",
]

T = TypeVar("T")


def require(cond: bool, message: str) -> None:
    """A cross-field check in :meth:`Table.validate`: raise
    ``ConfigError(message)`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class Bound:
    """The values a number field takes, declared with its type and checked
    whenever its table is built (from a file or in code)::

        batch_pages: Annotated[int, Bound(ge=1, le=65536)] = 512

    ``ge``/``gt`` and ``le``/``lt`` are the closed and open ends; a value must
    also be finite. :data:`POSITIVE`, :data:`NON_NEGATIVE` and :data:`UNIT` are
    the common ones.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        low = f"[{_number(self.ge)}" if self.ge is not None else None
        low = f"({_number(self.gt)}" if self.gt is not None else low
        high = f"{_number(self.le)}]" if self.le is not None else None
        high = f"{_number(self.lt)})" if self.lt is not None else high
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return "finite"


def _number(end: float) -> str:
    """``4096`` for 4096 and 4096.0, ``0.5`` for 0.5."""
    return str(int(end)) if float(end).is_integer() else repr(float(end))


POSITIVE = Bound(gt=0)
NON_NEGATIVE = Bound(ge=0)
UNIT = Bound(ge=0, le=1)


_BOUNDS: dict[type, tuple[tuple[str, Bound], ...]] = {}


def bounds(cls: type) -> tuple[tuple[str, Bound], ...]:
    """The declared :class:`Bound` of each field of the dataclass ``cls``."""
    found = _BOUNDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        found = tuple(
            (f.name, extra)
            for f in dataclasses.fields(cls)
            for extra in getattr(hints[f.name], "__metadata__", ())
            if isinstance(extra, Bound)
        )
        _BOUNDS[cls] = found
    return found


class Table:
    """Base of a config table (a frozen dataclass): on construction each
    field's declared :class:`Bound` is checked, then :meth:`validate`.
    ``class MoverConfig(Table, table="mover")`` names the table in errors
    (``mover.batch_pages must be in [1, 65536], got 0``)."""

    _table: typing.ClassVar[str] = ""

    def __init_subclass__(cls, *, table: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._table = table

    def __post_init__(self) -> None:
        prefix = f"{self._table}." if self._table else ""
        for name, bound in bounds(type(self)):
            value = getattr(self, name)
            require(bound.holds(value), f"{prefix}{name} must be {bound}, got {value}")
        self.validate()

    def validate(self) -> None:
        """Rules over more than one field, or beyond a :class:`Bound`."""


_VALUE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _value(key: str, value: object, hint: object) -> object:
    """``value`` checked against the field type ``hint`` (and converted)."""
    if hint is bool or hint is int or hint is str:
        if type(value) is not hint:
            raise ConfigError(f"{key}: expected {_VALUE_NAMES[hint]}, got {value!r}")
        return value
    if hint is float:
        if type(value) not in (int, float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        number = float(value)  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if typing.get_origin(hint) is tuple:
        item, ellipsis = typing.get_args(hint)
        assert ellipsis is Ellipsis, f"{key}: only tuple[X, ...] fields are supported"
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array, got {value!r}")
        return tuple(_value(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    raise AssertionError(f"{key}: field type {hint!r} is not supported")


def _table(cls: type[T], raw: object, prefix: str) -> T:
    """An instance of the dataclass ``cls`` from the TOML table ``raw``."""
    where = prefix or "the file"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r:.60}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            kind = "table" if isinstance(value, dict) and not prefix else "key"
            raise ConfigError(f"{full}: unknown {kind}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _table(hint, value, full)  # type: ignore[arg-type]
        elif typing.get_origin(hint) is Mapping:
            _, sub = typing.get_args(hint)
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a table of tables, got {value!r}")
            kwargs[key] = types.MappingProxyType(
                {name: _table(sub, v, f"{full}.{name}") for name, v in value.items()}
            )
        else:
            kwargs[key] = _value(full, value, hint)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ checks name their key; a nested one may not know its table.
        if prefix and not str(err).startswith(prefix.split(".")[0]):
            raise ConfigError(f"{prefix}: {err}") from err
        raise


def loads(cls: type[T], text: str, source: str = "<string>") -> T:
    """Parse and validate TOML ``text`` into ``cls``.

    Raises:
        ConfigError: invalid TOML, an unknown key, a wrong type or a value its
            dataclass refuses; the message names ``source`` and the key.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from err
    try:
        return _table(cls, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def load(cls: type[T], path: Path | str) -> T:
    """Read and validate the TOML file ``path`` (UTF-8, whatever the locale).

    Raises:
        ConfigError: as :func:`loads`, or the file cannot be read or decoded.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 (byte {data[err.start]:#04x} on line {line}); "
            "TOML files must be UTF-8"
        ) from err
    return loads(cls, text, str(path))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise AssertionError(f"cannot write {value!r} as TOML")


def _dump_table(header: str, obj: Any) -> list[str]:
    lines = [f"[{header}]"]
    nested: list[str] = []
    declared = dict(bounds(type(obj)))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        full = f"{header}.{f.name}"
        if dataclasses.is_dataclass(value):
            nested += _dump_table(full, value)
        elif isinstance(value, Mapping):
            for name, sub in sorted(value.items()):
                nested += _dump_table(f"{full}.{name}", sub)
        elif f.name in declared:
            lines.append(f"{f.name} = {_toml_value(value)}  # {declared[f.name]}")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return [*lines, "", *nested]


def dumps(cfg: object) -> str:
    """The effective configuration ``cfg``, defaults included, as TOML."""
    lines: list[str] = []
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if isinstance(value, Mapping):
            for name, sub in sorted(value.items()):
                lines += _dump_table(f"{f.name}.{name}", sub)
        else:
            lines += _dump_table(f.name, value)
    return "\n".join(lines)
