"""Parsers of the libvirt backend: domain stats and error codes."""

from __future__ import annotations

import pytest

from agent_host.errors import NoSuchDomain
from hypertier_common.errors import AccessDenied, BackendError, Unsupported
from tests import DATA
from tests.needs import requires_libvirt

pytestmark = requires_libvirt
libvirt = pytest.importorskip("libvirt", reason=requires_libvirt.kwargs["reason"])

from agent_host.libvirt_backend import (  # noqa: E402 - after the skip
    LibvirtHostBackend,
    _map_error,
    stats_from_record,
)


def test_stats_sum_query_stats_fields() -> None:
    record = {
        "cpu.time": 2_500_000_000,
        "balloon.current": 1024,
        "vm.remote_tlb_flush.sum": 7,
        "vcpu.0.tlb_flush.sum": 3,
        "vcpu.1.tlb_flush.sum": 4,
        "vcpu.0.exits.sum": 100,
        "vcpu.1.exits.sum": 50,
    }
    stats = stats_from_record("vm1", record)
    assert (stats.remote_tlb_flush, stats.tlb_flush, stats.exits) == (7, 7, 150)
    assert stats.cpu_time_s == 2.5
    assert stats.balloon_current_bytes == 1 << 20


def test_missing_stats_stay_none() -> None:
    stats = stats_from_record("vm1", {"state.state": 1})
    assert stats.remote_tlb_flush is None
    assert stats.exits is None
    assert stats.cpu_time_s is None


def _err(code: int) -> libvirt.libvirtError:
    err = libvirt.libvirtError("boom")
    err.err = (code, 0, "boom", 0, "", None, None, 0, 0)
    return err


@pytest.mark.parametrize(
    ("code", "exc"),
    [
        pytest.param(libvirt.VIR_ERR_NO_DOMAIN, NoSuchDomain, id="no-domain"),
        pytest.param(libvirt.VIR_ERR_NO_SUPPORT, Unsupported, id="no-support"),
        pytest.param(
            libvirt.VIR_ERR_OPERATION_UNSUPPORTED, Unsupported, id="op-unsupported"
        ),
        pytest.param(libvirt.VIR_ERR_AUTH_FAILED, AccessDenied, id="auth"),
        pytest.param(libvirt.VIR_ERR_INTERNAL_ERROR, BackendError, id="internal"),
    ],
)
def test_libvirt_errors_map_by_code(code: int, exc: type[Exception]) -> None:
    assert isinstance(_map_error(_err(code), "vm1", "resize"), exc)


def test_libvirt_backend_reconnects_after_connection_loss() -> None:
    backend = LibvirtHostBackend("test:///default", root=DATA / "host-sysfs-1node")
    try:
        backend._conn.close()  # what a libvirtd restart does to the connection
        assert isinstance(backend.domains(), list)
        assert backend.reconnects == 1
    finally:
        backend.close()
