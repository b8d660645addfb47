"""hypertier_common.control: one reply shape, every error kind over the wire."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_guest.errors import ERROR_KINDS as GUEST_KINDS
from agent_host.errors import ERROR_KINDS as HOST_KINDS
from hypertier_common import errors
from hypertier_common.control import ControlClient, ControlServer

KINDS = {**GUEST_KINDS, **HOST_KINDS}


class _Controller:
    METHODS = ("echo", "fail", "bug")

    def __init__(self) -> None:
        self.calls = 0
        self.error: errors.AgentError = errors.BackendError("x")

    def echo(self, text: str, times: int = 1) -> dict[str, str]:
        self.calls += 1
        return {"text": text * times}

    def fail(self) -> None:
        raise self.error

    def bug(self) -> None:
        raise TypeError("a bug, not bad parameters")


@pytest.fixture
def served() -> Iterator[tuple[_Controller, ControlClient, Path]]:
    directory = Path(tempfile.mkdtemp(prefix="htc", dir="/tmp"))
    path = directory / "ctl.sock"
    controller = _Controller()
    server = ControlServer(controller, path)
    server.start()
    yield controller, ControlClient(path, KINDS), path
    server.close()
    shutil.rmtree(directory)


def _raw(path: Path, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        reply: dict[str, object] = json.loads(sock.makefile("rb").readline())
    return reply


def test_a_result_comes_back_in_the_one_reply_shape(served) -> None:  # type: ignore[no-untyped-def]
    _, client, path = served
    assert client.call("echo", text="ab", times=2) == {"text": "abab"}
    reply = _raw(path, b'{"method": "echo", "params": {"text": "x"}}')
    assert reply == {"ok": True, "result": {"text": "x"}}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(errors.ConfigError("bad value"), id="ConfigError"),
        pytest.param(errors.BackendError("libvirt went away"), id="BackendError"),
        pytest.param(errors.Unsupported("virtio-mem", "no driver"), id="Unsupported"),
        pytest.param(errors.AccessDenied("/dev/x", "run as root"), id="AccessDenied"),
        pytest.param(errors.NotRunning("/run/x.sock", "refused"), id="NotRunning"),
        pytest.param(errors.InternalError("internal"), id="InternalError"),
        pytest.param(errors.NoSuchDomain("web1"), id="NoSuchDomain"),
        pytest.param(errors.NoSuchProcess(42), id="NoSuchProcess"),
    ],
)
def test_every_error_kind_comes_back_as_itself(
    served,  # type: ignore[no-untyped-def]
    error: errors.AgentError,
) -> None:
    controller, client, path = served
    controller.error = error
    with pytest.raises(type(error)) as got:
        client.call("fail")
    assert type(got.value) is type(error)
    assert str(got.value) == str(error)
    for name in error.WIRE_ATTRS:
        assert getattr(got.value, name) == getattr(error, name)
    reply = _raw(path, b'{"method": "fail"}')
    assert reply["ok"] is False
    assert reply["error"] == {
        "kind": type(error).__name__,
        "message": str(error),
        "attrs": {name: getattr(error, name) for name in error.WIRE_ATTRS},
    }


def test_bad_parameters_are_refused_before_the_call(served) -> None:  # type: ignore[no-untyped-def]
    controller, client, _ = served
    with pytest.raises(errors.ConfigError, match="echo: missing a required argument"):
        client.call("echo")
    with pytest.raises(errors.ConfigError, match="unexpected keyword argument 'color'"):
        client.call("echo", text="x", color="red")
    assert controller.calls == 0


def test_a_type_error_inside_a_method_is_a_bug_not_bad_parameters(
    served,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, client, _ = served
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(errors.InternalError, match="a bug"),
    ):
        client.call("bug")
    assert "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param(b"not json", "request is not JSON", id="not-json"),
        pytest.param(b'{"method": "rm"}', "unknown method", id="unknown-method"),
        pytest.param(b'{"method": "_call"}', "unknown method", id="private"),
        pytest.param(b'{"method": "echo", "params": []}', "params", id="params"),
    ],
)
def test_malformed_requests_are_config_errors(
    served, line: bytes, message: str
) -> None:  # type: ignore[no-untyped-def]
    _, _, path = served
    reply = _raw(path, line)
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["kind"] == "ConfigError"
    assert message in str(error["message"])


def test_an_unknown_kind_from_a_newer_daemon_is_a_backend_error() -> None:
    from hypertier_common.errors import error_from_wire

    err = error_from_wire({"kind": "Quota", "message": "over", "attrs": {}}, KINDS)
    assert type(err) is errors.BackendError
    assert "Quota" in str(err)


def test_no_daemon_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(errors.NotRunning) as got:
        ControlClient(tmp_path / "none.sock", KINDS).call("status")
    assert got.value.path == str(tmp_path / "none.sock")


def test_a_dead_daemons_socket_is_replaced_a_live_one_is_not(served) -> None:  # type: ignore[no-untyped-def]
    _, _, path = served
    with pytest.raises(errors.BackendError, match="another daemon is running"):
        ControlServer(_Controller(), path)
    dead = path.parent / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))  # bound, never listening: what a killed daemon leaves
    server = ControlServer(_Controller(), dead)
    server.start()
    try:
        assert ControlClient(dead, KINDS).call("echo", text="y") == {"text": "y"}
        assert dead.stat().st_mode & 0o777 == 0o660
    finally:
        server.close()
    assert not dead.exists()
