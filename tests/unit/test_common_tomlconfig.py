"""hypertier_common.tomlconfig: one strict loader for both agents' config files."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated

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
    on: bool = True
    name: str = "x"


@dataclass(frozen=True)
class _Config:
    part: _Part = field(default_factory=_Part)
    named: Mapping[str, _Part] = field(default_factory=dict)


def test_arrays_are_tuples_and_ints_are_accepted_as_floats() -> None:
    cfg = tomlconfig.loads(_Config, "[part]\nrate = 2\nnodes = [1, 2]\n")
    assert cfg.part == _Part(rate=2.0, nodes=(1, 2))
    assert isinstance(cfg.part.rate, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[part]\nrate = nan\n", "part.rate: expected a finite", id="nan"),
        pytest.param("[part]\nrate = inf\n", "part.rate: expected a finite", id="inf"),
        pytest.param("[part]\nrat = 1\n", "part.rat: unknown key", id="key"),
        pytest.param("[prat]\n", "prat: unknown table", id="table"),
        pytest.param("[part]\non = 1\n", "part.on: expected a boolean", id="bool"),
        pytest.param("[part]\nrate = true\n", "part.rate: expected a number", id="num"),
        pytest.param(
            "[part]\nnodes = [1, 1.5]\n",
            r"part.nodes\[1\]: expected an integer",
            id="item",
        ),
        pytest.param("[part]\nnodes = 1\n", "part.nodes: expected an array", id="arr"),
        pytest.param("part = 1\n", "part: expected a table", id="not-table"),
        pytest.param("[named.a]\nrate = -1\n", "named.a: rate must be", id="post-init"),
        pytest.param("named = 1\n", "named: expected a table of tables", id="tables"),
        pytest.param("[part\n", "not valid TOML", id="syntax"),
    ],
)
def test_errors_name_the_source_and_the_full_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^cfg\.toml: .*{message}"):
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
    pytest.param(guest_config, "guest", "sampler.window_s", id="guest"),
    pytest.param(host_config, "host", "policy.interval_s", id="host"),
]


@pytest.mark.parametrize(("module", "table", "float_key"), AGENTS)
def test_both_agents_keep_arrays_as_tuples_and_ints_as_floats(
    module: ModuleType, table: str, float_key: str
) -> None:
    cfg = module.loads(f"[{table}]\nfast_nodes = [0]\n")
    assert getattr(cfg, table).fast_nodes == (0,)
    section, key = float_key.split(".")
    value = getattr(getattr(module.loads(f"[{section}]\n{key} = 2\n"), section), key)
    assert (type(value), value) == (float, 2.0)


@pytest.mark.parametrize(("module", "table", "float_key"), AGENTS)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "[{table}]\nfast_nodes = 0\n",
            "{table}.fast_nodes: expected an array",
            id="array",
        ),
        pytest.param(
            '[{table}]\nfast_nodes = ["0"]\n',
            r"{table}.fast_nodes\[0\]: expected an integer",
            id="item",
        ),
        pytest.param(
            "[{section}]\n{key} = inf\n",
            "{section}.{key}: expected a finite number",
            id="inf",
        ),
        pytest.param(
            '[{section}]\n{key} = "1s"\n',
            "{section}.{key}: expected a number",
            id="str",
        ),
        pytest.param(
            "[{section}]\n{key}x = 1\n", "{section}.{key}x: unknown key", id="key"
        ),
        pytest.param("[{table}x]\n", "{table}x: unknown table", id="table"),
        pytest.param("{table} = 1\n", "{table}: expected a table", id="not-table"),
        pytest.param("[{table}\n", "not valid TOML", id="syntax"),
    ],
)
def test_both_agents_refuse_what_the_strict_loader_refuses(
    module: ModuleType, table: str, float_key: str, text: str, message: str
) -> None:
    section, key = float_key.split(".")
    names = {"table": table, "section": section, "key": key}
    with pytest.raises(ConfigError, match=message.format(**names)):
        module.loads(text.format(**names))


@pytest.mark.parametrize(("module", "table", "float_key"), AGENTS)
def test_both_agents_load_their_defaults_from_an_empty_file_and_dump_them_back(
    module: ModuleType, table: str, float_key: str
) -> None:
    assert module.loads("") == module.Config()
    assert module.loads(module.dumps(module.Config())) == module.Config()


@pytest.mark.parametrize(("module", "table", "float_key"), AGENTS)
def test_both_agents_name_a_missing_file_as_unreadable(
    module: ModuleType, table: str, float_key: str, tmp_path: Path
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


def _just_outside(bound: tomlconfig.Bound) -> float:
    if bound.ge is not None:
        return bound.ge - 1
    if bound.gt is not None:
        return bound.gt
    return (bound.le + 1) if bound.le is not None else bound.lt  # type: ignore[operator,return-value]


@pytest.mark.parametrize(("module", "table", "float_key"), AGENTS)
def test_every_declared_bound_refuses_a_value_outside_it_naming_the_key(
    module: ModuleType, table: str, float_key: str
) -> None:
    fields = _bounded_fields(module)
    assert len(fields) >= 10, "the agent's tables declare their bounds"
    for name, key, bound in fields:
        outside = _just_outside(bound)
        value = int(outside) if outside == int(outside) else outside
        text = f"[{name}]\n{key} = {value!r}\n"
        message = f"f.toml: {name}.{key} must be {bound}, got"
        with pytest.raises(ConfigError, match=re.escape(message)):
            module.loads(text, "f.toml")


@pytest.mark.parametrize(("module", "table", "float_key"), AGENTS)
def test_the_dump_gives_each_bounded_key_its_bounds(
    module: ModuleType, table: str, float_key: str
) -> None:
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
