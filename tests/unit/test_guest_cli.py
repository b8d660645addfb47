"""hypertier-guest CLI: its own flags, the daemon behind the control socket.

The convention both agents share (exit codes, -v/-q, --version, errors) is
tested once for both in test_cli_convention.py. No test here depends on time:
the daemon runs on a clock that stands still and the test ticks it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_guest import cli, cmd_run, config
from agent_guest.daemon import Daemon
from emu.backends.guest import EmuGuestBackend
from emu.clock import FakeClock
from emu.machine import World
from hypertier_common.errors import BackendError
from tests import serving
from tests.serving import TIMEOUT_S


def _write(tmp_path: Path, text: str, name: str = "guest.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_check_names_an_unknown_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[mover]\nbatch_pgaes = 64\n")
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"hypertier-guest: error: {path}: mover.batch_pgaes: unknown key" in err


def test_config_show_with_a_file_prints_its_effective_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[sampler]\nrate_hz = 123\n")
    assert cli.main(["config", "show", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rate_hz = 123" in out
    assert "batch_pages = 512" in out  # defaults included
    assert config.loads(out) == config.load(path)


def test_run_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, '[sampler]\nsource = "magic"\n')
    assert cli.main(["run", "-c", str(path)]) == 2


def test_run_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    assert cli.main(["run", "--config", str(tmp_path / "none.toml")]) == 2


def test_run_backend_flag_overrides_the_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The file says linux; --backend emu wins and is refused for what it is.
    path = _write(tmp_path, '[guest]\nbackend = "linux"\n')
    assert cli.main(["run", "-c", str(path), "--backend", "emu"]) == 2
    assert "backend 'emu' is the emulator's" in caplog.text


class _Running:
    """``cmd_run.serve`` over the emulator in a thread, on a clock that stands
    still: the loop ticks once and then waits for a stop."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / "guest.sock")
        self.config = _write(
            tmp_path,
            f'[guest]\nbackend = "emu"\ncontrol_socket = "{self.socket}"\n',
        )
        self.world = World(1 << 30, 1 << 31, seed=1)
        self.world.add_vm("vm", 1, 16 << 20, 64 << 20)
        self.loads = 0

        def load() -> config.Config:
            self.loads += 1
            return config.load(self.config)

        served = serving.start(
            cmd_run.serve,
            config.load(self.config),
            EmuGuestBackend(self.world, "vm"),
            load,
        )
        self.thread, self.signals = served.thread, served.signals
        self.daemon: Daemon = served.daemon

    def close(self) -> None:
        self.daemon.stop()
        self.thread.join(TIMEOUT_S)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[_Running]:
    r = _Running(tmp_path)
    yield r
    r.close()


def test_status_json_reports_counters(
    running: _Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--json", "--socket", running.socket]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["source"] == "pebs"
    assert "pages_promoted" in st


def test_status_text_has_units_and_no_python_values(
    running: _Running, capsys: pytest.CaptureFixture[str]
) -> None:
    running.daemon.tick()
    assert cli.main(["status", "-c", str(running.config)]) == 0
    out = capsys.readouterr().out
    assert "source pebs" in out
    assert "hot set 0.0 MiB" in out
    assert "fast allotment none yet" in out
    assert "None" not in out
    assert "[" not in out  # no raw lists


def test_control_socket_is_group_accessible_only(running: _Running) -> None:
    assert os.stat(running.socket).st_mode & 0o777 == 0o660


def test_reload_rereads_the_config_before_it_answers(running: _Running) -> None:
    text = running.config.read_text() + "[sampler]\nrate_hz = 123\n"
    running.config.write_text(text)
    assert cli.main(["reload", "--socket", running.socket]) == 0
    assert running.loads == 1
    assert running.daemon.config.sampler.rate_hz == 123


def test_reload_of_a_broken_config_exits_2_and_keeps_the_old_one(
    running: _Running, capsys: pytest.CaptureFixture[str]
) -> None:
    running.config.write_text(running.config.read_text() + "[mover]\nbatch_pages = 0\n")
    before = running.daemon.config
    assert cli.main(["reload", "--socket", running.socket]) == 2
    assert "mover.batch_pages" in capsys.readouterr().err
    assert running.daemon.config is before


def test_hup_reloads_and_term_stops(running: _Running) -> None:
    running.config.write_text(running.config.read_text() + "[sampler]\nrate_hz = 7\n")
    running.signals.request_reload()  # what SIGHUP does
    running.signals.request_stop()  # what SIGTERM does
    running.thread.join(TIMEOUT_S)
    assert not running.thread.is_alive()
    assert running.daemon.config.sampler.rate_hz == 7
    assert not Path(running.socket).exists()


def test_stop_ends_the_daemon_cleanly(running: _Running) -> None:
    assert cli.main(["stop", "-c", str(running.config)]) == 0
    running.thread.join(TIMEOUT_S)
    assert not running.thread.is_alive()
    assert running.world.vm("vm").sampling is None  # sampling stopped


def test_a_second_daemon_on_the_same_socket_is_refused(running: _Running) -> None:
    world = World(1 << 30, 1 << 31, seed=1)
    world.add_vm("vm", 1, 16 << 20, 64 << 20)
    with pytest.raises(BackendError, match="another daemon is running"):
        cmd_run.serve(
            config.load(running.config),
            EmuGuestBackend(world, "vm"),
            FakeClock(advance_on_wait=False),
            lambda: config.load(running.config),
        )
    assert cli.main(["status", "--socket", running.socket]) == 0
