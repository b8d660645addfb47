"""hypertier_common.tomlconfig: one strict loader for both agents' config files."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from agent_guest import config as guest_config
from agent_host import config as host_config
from hypertier_common import tomlconfig
from hypertier_common.errors import ConfigError


@dataclass(frozen=True)
class _Part:
    rate: float = 1.0
    nodes: tuple[int, ...] = ()
    on: bool = True
    name: str = "x"

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ConfigError(f"rate must be >= 0, got {self.rate}")


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


@pytest.mark.parametrize(
    ("check", "message"),
    [
        pytest.param(
            lambda: tomlconfig.check("t", SimpleNamespace(k=0), positive="k"),
            r"t.k must be > 0",
            id="gt",
        ),
        pytest.param(
            lambda: tomlconfig.check("t", SimpleNamespace(k=math.nan), positive="k"),
            "t.k must be > 0",
            id="nan",
        ),
        pytest.param(
            lambda: tomlconfig.check("t", SimpleNamespace(k=-1), non_negative="k"),
            "t.k must be >= 0",
            id="ge",
        ),
        pytest.param(
            lambda: tomlconfig.check(
                "t", SimpleNamespace(k=math.inf), non_negative="k"
            ),
            "t.k must be >=",
            id="inf",
        ),
        pytest.param(
            lambda: tomlconfig.in_range("t.k", 9, 1, 8),
            r"t.k must be in \[1, 8\], got 9",
            id="range",
        ),
        pytest.param(lambda: tomlconfig.require(False, "said so"), "said so", id="req"),
        pytest.param(
            lambda: tomlconfig.check("t", SimpleNamespace(a=1, b=0), positive="a b"),
            r"t.b must be > 0, got 0",
            id="check-positive",
        ),
        pytest.param(
            lambda: tomlconfig.check("t", SimpleNamespace(a=-2), non_negative="a"),
            r"t.a must be >= 0, got -2",
            id="check-non-negative",
        ),
        pytest.param(
            lambda: tomlconfig.check("t", SimpleNamespace(a=0, b=1.5), unit="a b"),
            r"t.b must be in \[0, 1\], got 1.5",
            id="check-unit",
        ),
    ],
)
def test_range_checks_name_the_key_and_the_value(
    check: Callable[[], None], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check()


def test_range_checks_pass_values_inside() -> None:
    tomlconfig.check("t", SimpleNamespace(k=0.5), positive="k")
    tomlconfig.check("t", SimpleNamespace(k=0), non_negative="k")
    tomlconfig.in_range("t.k", 8, 1, 8)
    tomlconfig.require(True, "unused")
    tomlconfig.check(
        "t", SimpleNamespace(a=1, b=0, c=1), positive="a", non_negative="b", unit="c"
    )
