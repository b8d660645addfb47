"""Unit tests of agent_host.config: the host's own rules, classes and dumps round
trip (the strict loader's type, key, file and bound errors, on both agents:
test_common_tomlconfig)."""

from __future__ import annotations

import pytest

from agent_host.config import ClassConfig, Config, dumps, loads
from hypertier_common.errors import ConfigError

FULL = """
[host]
backend = "emu"
uri = "test:///default"
control_socket = "/tmp/h.sock"
fast_nodes = [0]
slow_nodes = [1]
emulate_slow_tier = false
sysfs_root = "/tmp/sys"
fast_capacity_bytes = 1073741824
channel_dir = "/tmp/ch"

[policy]
interval_s = 0.5
slow_overcommit_ratio = 2
safety_margin_bytes = 1048576
default_class = "gold"

[channel]
max_msgs_per_s = 4

[metrics]
listen = "127.0.0.1:9464"

[classes.gold]
weight = 8

[classes.bronze]
weight = 1
"""


def test_defaults_are_valid() -> None:
    cfg = loads("")
    assert cfg.host.backend == "libvirt"
    assert cfg.weight("gold") > cfg.weight("bronze")


def test_full_file_loads() -> None:
    cfg = loads(FULL)
    assert cfg.host.fast_nodes == (0,)
    assert cfg.policy.slow_overcommit_ratio == 2.0
    assert dict(cfg.classes) == {"gold": ClassConfig(8.0), "bronze": ClassConfig(1.0)}


def test_full_file_round_trips_through_dumps() -> None:
    cfg = loads(FULL)
    assert loads(dumps(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "[classes.gold]\nwieght = 2\n", "classes.gold.wieght: unknown key", id="cls"
        ),
        pytest.param('[host]\nbackend = "xen"\n', "host.backend", id="backend"),
        pytest.param("[classes.gold]\nweight = -1\n", "classes.gold", id="weight"),
        pytest.param(
            '[policy]\ndefault_class = "platinum"\n', "default_class", id="default"
        ),
        pytest.param(
            "[host]\nfast_nodes = [0]\nslow_nodes = [0]\nemulate_slow_tier = false\n",
            "overlap",
            id="overlap",
        ),
        pytest.param("classes = 1\n", "classes", id="classes-not-table"),
    ],
)
def test_invalid_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        loads(text)


def test_unknown_class_uses_default_weight() -> None:
    cfg = Config()
    assert cfg.weight("nonexistent") == cfg.weight(cfg.policy.default_class)
