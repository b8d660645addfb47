"""hypertier_common.tomlconfig: one strict loader for both agents' config files."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_guest import config as guest_config
from agent_host import config as host_config
from hypertier_common import tomlconfig
from hypertier_common.errors import ConfigError


@dataclass(frozen=True)
class _Part(tomlconfig.Table):
    rate: Annotated[float, tomlconfig.NON_NEGATIVE] = 1.0
    nodes: tuple[int, ...] = ()
    count: int = 1
    on: bool = True
    name: str = "x"


@dataclass(frozen=True)
class _Config:
    part: _Part = field(default_factory=_Part)
    named: Mapping[str, _Part] = field(default_factory=dict)


@dataclass(frozen=True)
class _Schema:
    """A configuration the strict loader reads (``loads(text, source)``) and a
    dotted key of each kind in it: the same error cases run on each."""

    loads: Callable[[str, str], Any]
    array: str  # an array of integers
    number: str  # a float
    integer: str
    flag: str  # a boolean

    def names(self) -> dict[str, str]:
        """The keys to fill a case's text and message with, and ``table``,
        the array's table."""
        return {
            "array": self.array,
            "number": self.number,
            "integer": self.integer,
            "flag": self.flag,
            "table": self.array.partition(".")[0],
        }


def _value(cfg: object, dotted: str) -> object:
    return functools.reduce(getattr, dotted.split("."), cfg)


SCHEMAS = [
    pytest.param(
        _Schema(
            functools.partial(tomlconfig.loads, _Config),
            "part.nodes",
            "part.rate",
            "part.count",
            "part.on",
        ),
        id="tomlconfig",
    ),
    pytest.param(
        _Schema(
            guest_config.loads,
            "guest.fast_nodes",
            "sampler.window_s",
            "mover.batch_pages",
            "sampler.induce_write_faults",
        ),
        id="guest",
    ),
    pytest.param(
        _Schema(
            host_config.loads,
            "host.fast_nodes",
            "policy.interval_s",
            "channel.burst_msgs",
            "host.emulate_slow_tier",
        ),
        id="host",
    ),
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_arrays_are_tuples_and_ints_are_accepted_as_floats(schema: _Schema) -> None:
    cfg = schema.loads(f"{schema.array} = [0]\n{schema.number} = 2\n", "cfg.toml")
    assert _value(cfg, schema.array) == (0,)
    value = _value(cfg, schema.number)
    assert (type(value), value) == (float, 2.0)


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{number} = nan\n", "{number}: expected a finite", id="nan"),
        pytest.param("{number} = inf\n", "{number}: expected a finite", id="inf"),
        pytest.param("{number} = true\n", "{number}: expected a number", id="num"),
        pytest.param('{number} = "1s"\n', "{number}: expected a number", id="str"),
        pytest.param("{number}x = 1\n", "{number}x: unknown key", id="key"),
        pytest.param("[{table}x]\n", "{table}x: unknown table", id="table"),
        pytest.param("{flag} = 1\n", "{flag}: expected a boolean", id="bool"),
        pytest.param(
            "{integer} = true\n", "{integer}: expected an integer", id="int-bool"
        ),
        pytest.param(
            '{integer} = "512"\n', "{integer}: expected an integer", id="int-str"
        ),
        pytest.param(
            "{array} = [0, 1.5]\n", "{array}[1]: expected an integer", id="item"
        ),
        pytest.param("{array} = 1\n", "{array}: expected an array", id="arr"),
        pytest.param("{table} = 1\n", "{table}: expected a table", id="not-table"),
        pytest.param("[{table}\n", "not valid TOML", id="syntax"),
    ],
)
def test_errors_name_the_source_and_the_full_key(
    schema: _Schema, text: str, message: str
) -> None:
    names = schema.names()
    expected = re.escape(message.format(**names))
    with pytest.raises(ConfigError, match=rf"^cfg\.toml: .*{expected}"):
        schema.loads(text.format(**names), "cfg.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[named.a]\nrat = 1\n", "named.a.rat: unknown key", id="key"),
        pytest.param("[named.a]\nrate = -1\n", "named.a: rate must be", id="bounds"),
        pytest.param("named = 1\n", "named: expected a table of tables", id="tables"),
    ],
)
def test_a_table_of_tables_names_the_entry_in_its_errors(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^cfg\.toml: {re.escape(message)}"):
        tomlconfig.loads(_Config, text, "cfg.toml")


def test_a_file_is_named_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[part]\nrat = 1\n")
    with pytest.raises(ConfigError, match=f"^{path}: part.rat: unknown key"):
        tomlconfig.load(_Config, path)
    with pytest.raises(ConfigError, match="cannot read"):
        tomlconfig.load(_Config, tmp_path / "none.toml")


def test_tables_of_tables_load_and_dump_back() -> None:
    cfg = tomlconfig.loads(_Config, '[named.b]\nname = "q\\""\n[named.a]\nrate = 3\n')
    assert dict(cfg.named) == {"a": _Part(rate=3.0), "b": _Part(name='q"')}
    assert tomlconfig.loads(_Config, tomlconfig.dumps(cfg)) == cfg


AGENTS = [
    pytest.param(guest_config, id="guest"),
    pytest.param(host_config, id="host"),
]


@pytest.mark.parametrize("module", AGENTS)
def test_both_agents_load_their_defaults_from_an_empty_file_and_dump_them_back(
    module: ModuleType,
) -> None:
    assert module.loads("") == module.Config()
    assert module.loads(module.dumps(module.Config())) == module.Config()


@pytest.mark.parametrize("module", AGENTS)
def test_both_agents_load_a_file_as_its_text(
    module: ModuleType, tmp_path: Path
) -> None:
    text = '[metrics]\nlisten = "127.0.0.1:9464"\n'
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert module.load(path) == module.loads(text)
    assert module.load(path) != module.Config()


@pytest.mark.parametrize("module", AGENTS)
def test_both_agents_name_a_missing_file_as_unreadable(
    module: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.toml'}.*cannot read"):
        module.load(tmp_path / "nope.toml")


_ENDS = st.one_of(st.none(), st.integers(-5, 5))


@settings(max_examples=300, deadline=None)
@given(
    ge=_ENDS,
    gt=_ENDS,
    le=_ENDS,
    lt=_ENDS,
    value=st.one_of(
        st.integers(-7, 7),
        st.floats(-7, 7),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    ),
)
def test_a_bound_holds_exactly_on_its_interval_and_says_which(
    ge: int | None, gt: int | None, le: int | None, lt: int | None, value: float
) -> None:
    bound = tomlconfig.Bound(ge=ge, gt=gt, le=le, lt=lt)
    inside = (
        math.isfinite(value)
        and all(value >= e for e in (ge,) if e is not None)
        and all(value > e for e in (gt,) if e is not None)
        and all(value <= e for e in (le,) if e is not None)
        and all(value < e for e in (lt,) if e is not None)
    )
    assert bound.holds(value) == inside


@pytest.mark.parametrize(
    ("bound", "text"),
    [
        pytest.param(tomlconfig.POSITIVE, "> 0", id="positive"),
        pytest.param(tomlconfig.NON_NEGATIVE, ">= 0", id="non-negative"),
        pytest.param(tomlconfig.UNIT, "in [0, 1]", id="unit"),
        pytest.param(tomlconfig.Bound(gt=0, le=100), "in (0, 100]", id="half-open"),
        pytest.param(tomlconfig.Bound(ge=0, lt=1), "in [0, 1)", id="open-top"),
        pytest.param(tomlconfig.Bound(ge=4096, le=1 << 24), "in [4096, 16777216]"),
        pytest.param(tomlconfig.Bound(lt=3), "< 3", id="below"),
    ],
)
def test_a_bound_reads_as_an_interval(bound: tomlconfig.Bound, text: str) -> None:
    assert str(bound) == text


def _bounded_fields(module: ModuleType) -> list[tuple[str, str, tomlconfig.Bound]]:
    """(table, key, bound) of every bounded field of an agent's tables."""
    cfg = module.Config()
    found = []
    for table in dataclasses.fields(cfg):
        value = getattr(cfg, table.name)
        if dataclasses.is_dataclass(value):
            for key, bound in tomlconfig.bounds(type(value)):
                found.append((table.name, key, bound))
    return found


def _just_outside(bound: tomlconfig.Bound) -> list[float]:
    """A value just outside each end the bound has."""
    below = [bound.ge - 1] if bound.ge is not None else []
    below += [bound.gt] if bound.gt is not None else []
    above = [bound.le + 1] if bound.le is not None else []
    above += [bound.lt] if bound.lt is not None else []
    return below + above


@pytest.mark.parametrize("module", AGENTS)
def test_every_declared_bound_refuses_a_value_outside_it_naming_the_key(
    module: ModuleType,
) -> None:
    fields = _bounded_fields(module)
    assert len(fields) >= 10, "the agent's tables declare their bounds"
    for name, key, bound in fields:
        for outside in _just_outside(bound):
            value = int(outside) if outside == int(outside) else outside
            text = f"[{name}]\n{key} = {value!r}\n"
            message = f"f.toml: {name}.{key} must be {bound}, got"
            with pytest.raises(ConfigError, match=re.escape(message)):
                module.loads(text, "f.toml")


@pytest.mark.parametrize("module", AGENTS)
def test_the_dump_gives_each_bounded_key_its_bounds(module: ModuleType) -> None:
    lines = module.dumps(module.Config()).splitlines()
    for name, key, bound in _bounded_fields(module):
        at = lines.index(f"[{name}]")
        entry = next(line for line in lines[at:] if line.startswith(f"{key} = "))
        assert entry.endswith(f"  # {bound}"), entry


def test_a_table_checks_its_bounds_before_its_own_rules() -> None:
    @dataclass(frozen=True)
    class Sized(tomlconfig.Table, table="t"):
        low: Annotated[int, tomlconfig.POSITIVE] = 1
        high: Annotated[int, tomlconfig.POSITIVE] = 2

        def validate(self) -> None:
            tomlconfig.require(self.low <= self.high, "t: low > high")

    with pytest.raises(ConfigError, match=r"t.low must be > 0, got 0"):
        Sized(low=0, high=-1)
    with pytest.raises(ConfigError, match="t: low > high"):
        Sized(low=3)
    assert Sized(low=2).high == 2
