"""The ``[metrics]`` table (hypertier_common.metrics.MetricsConfig), loaded
alike by both agents' configurations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent_guest import config as guest_config
from agent_host import config as host_config
from hypertier_common.errors import ConfigError
from hypertier_common.metrics import split_listen

Loads = Callable[[str], Any]


@pytest.fixture(
    params=[
        pytest.param(guest_config.loads, id="guest"),
        pytest.param(host_config.loads, id="host"),
    ]
)
def loads(request: pytest.FixtureRequest) -> Loads:
    """Each agent's ``config.loads``."""
    loader: Loads = request.param
    return loader


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        pytest.param("127.0.0.1:9464", "127.0.0.1", 9464, id="ipv4"),
        pytest.param("[::1]:9464", "::1", 9464, id="ipv6-loopback"),
        pytest.param("[::]:9464", "::", 9464, id="ipv6-any"),
        pytest.param("localhost:9464", "localhost", 9464, id="name"),
    ],
)
def test_metrics_listen_accepts_ipv4_bracketed_ipv6_and_names(
    loads: Loads, listen: str, host: str, port: int
) -> None:
    cfg = loads(f'[metrics]\nlisten = "{listen}"\n')
    assert split_listen(cfg.metrics.listen) == (host, port)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        pytest.param("::1:9464", "in brackets", id="ipv6-unbracketed"),
        pytest.param("[::1:9464", "in brackets", id="ipv6-half-bracketed"),
        pytest.param("[10.0.0.1]:9464", "not an IPv6 address", id="ipv4-bracketed"),
        pytest.param("[::1]:99999", "port", id="port-range"),
        pytest.param("[::1]:0", "port", id="port-zero"),
        pytest.param(":9464", "address", id="no-address"),
        pytest.param("9464", "address:port", id="no-port"),
    ],
)
def test_metrics_listen_rejects_what_cannot_be_bound(
    loads: Loads, listen: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"metrics.listen.*{message}"):
        loads(f'[metrics]\nlisten = "{listen}"\n')
