"""config: the guest's own rules and messages, dumps/load round trip (the strict
loader's type, key, file and bound errors, on both agents: test_common_tomlconfig)."""

from __future__ import annotations

import pytest

from agent_guest import config
from hypertier_common.errors import ConfigError

ANSIBLE_LIKE = """
[guest]
backend = "linux"
control_socket = "/run/hypertier/guest.sock"
channel_path = "/dev/virtio-ports/org.hypertier.0"

[sampler]
source = "auto"
window_s = 1.0
rate_hz = 4000

[mover]
max_bandwidth_mib_s = 200
batch_pages = 512

[targets]
min_rss_bytes = 67108864
"""


def test_the_ansible_template_keys_load() -> None:
    cfg = config.loads(ANSIBLE_LIKE)
    assert cfg.targets.min_rss_bytes == 64 << 20
    assert cfg.sampler.rate_hz == 4000


def test_non_default_values_round_trip_through_dumps() -> None:
    cfg = config.loads(
        "[guest]\nfast_nodes = [0]\nslow_nodes = [1, 2]\n"
        'control_socket = "/tmp/a \\"b\\""\n'
        '[sampler]\nsource = "page-fault"\nfault_event = "tracepoint"\n'
        "induce_write_faults = false\nwindow_s = 0.25\n"
        '[targets]\npids = [10, 20]\ncomm_pattern = "^redis"\n'
        'cgroup = "/system.slice"\n'
    )
    assert config.loads(config.dumps(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[guest]\nbackend = "xen"\n', "guest.backend", id="backend"),
        pytest.param('[sampler]\nsource = "pmu"\n', "sampler.source", id="source"),
        pytest.param("[sampler]\nring_pages = 3\n", "power of two", id="ring"),
        pytest.param(
            "[sampler]\nrate_hz = 4000\nboost_rate_hz = 1000\n",
            "sampler.boost_rate_hz must be 0",
            id="boost",
        ),
        pytest.param(
            '[targets]\ncomm_pattern = "("\n', "targets.comm_pattern", id="regex"
        ),
        pytest.param(
            "[guest]\nfast_nodes = [1]\nslow_nodes = [1]\n", "share [1]", id="roles"
        ),
    ],
)
def test_invalid_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
    ):
        config.loads(text)


def test_old_a_bit_source_name_loads_as_soft_dirty_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="agent_guest.config"):
        cfg = config.loads('[sampler]\nsource = "a-bit"\n')
    assert cfg.sampler.source == "soft-dirty"
    assert "deprecated" in caplog.text
    assert 'source = "soft-dirty"' in config.dumps(cfg)
