"""hypertier-guest CLI: every subcommand and flag, exit codes, the control socket."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_guest import cli, config
from agent_guest.cmd_run import serve
from agent_guest.control import Controller, ControlServer
from agent_guest.daemon import Daemon
from emu.backends.guest import EmuGuestBackend
from emu.clock import FakeClock
from emu.machine import World


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _write(tmp_path: Path, text: str, name: str = "guest.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_help_exits_zero_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out


@pytest.mark.parametrize("sub", ["run", "status", "reload", "stop", "config"])
def test_every_subcommand_has_help_with_examples(
    sub: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([sub, "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "error" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error() -> None:
    assert cli.main(["status", "--bogus"]) == 2


def test_config_check_accepts_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[mover]\nbatch_pages = 64\n")
    assert cli.main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_config_check_names_an_unknown_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[mover]\nbatch_pgaes = 64\n")
    assert cli.main(["config", "check", str(path)]) == 2
    assert "mover.batch_pgaes: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["config", "check"], id="check"),
        pytest.param(["run", "-c"], id="run"),
    ],
)
def test_a_config_file_that_is_not_utf8_exits_2_naming_it(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "guest.toml"
    path.write_bytes(b'[targets]\ncomm_pattern = "caf\xe9"\n')  # Latin-1
    assert cli.main([*argv, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not UTF-8" in err
    assert "Traceback" not in err


def test_config_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    assert cli.main(["config", "check", str(tmp_path / "none.toml")]) == 2


def test_config_show_prints_defaults_that_load_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["config", "show"]) == 0
    assert config.loads(capsys.readouterr().out) == config.Config()


def test_config_show_with_a_file_prints_its_effective_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[sampler]\nrate_hz = 123\n")
    assert cli.main(["config", "show", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rate_hz = 123" in out
    assert "batch_pages = 512" in out  # defaults included


def test_verbose_enables_debug_logging(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    assert cli.main(["-v", "config", "check", str(path)]) == 0
    assert logging.getLogger().level == logging.DEBUG


def test_json_log_format_writes_one_object_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "absent.sock"
    assert cli.main(["--log-format", "json", "status", "--socket", str(sock)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    rec = json.loads(line)
    assert rec["level"] == "ERROR"
    assert "cannot reach the daemon" in rec["msg"]


def test_run_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, '[sampler]\nsource = "magic"\n')
    assert cli.main(["run", "-c", str(path)]) == 2


def test_run_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    assert cli.main(["run", "--config", str(tmp_path / "none.toml")]) == 2


def test_run_backend_flag_overrides_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The emulator's backend needs a World, so it cannot run standalone.
    path = _write(tmp_path, "")
    assert cli.main(["run", "-c", str(path), "--backend", "emu"]) == 2
    assert "cannot run standalone" in capsys.readouterr().err


class _Running:
    """A daemon over the emulator with its control socket, looping in a thread.

    Its clock moves only when the test advances it: the daemon ticks once at
    start, then waits for the test (or a stop).
    """

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / "guest.sock")
        self.config = _write(
            tmp_path,
            f'[guest]\nbackend = "emu"\ncontrol_socket = "{self.socket}"\n'
            "[sampler]\nwindow_s = 0.05\n",
        )
        self.clock = FakeClock(advance_on_wait=False)
        world = World(1 << 30, 1 << 31, seed=1, clock=self.clock)
        world.add_vm("vm", 1, 16 << 20, 64 << 20)
        self.cfg = config.load(self.config)
        self.reloaded = threading.Event()

        def load() -> config.Config:
            self.reloaded.set()
            return self.cfg

        self.daemon = Daemon(self.cfg, EmuGuestBackend(world, "vm"), self.clock, load)
        self.server = ControlServer(self.socket, Controller(self.daemon))
        self.server.start()
        self.thread = threading.Thread(target=self.daemon.run)
        self.thread.start()

    def close(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=10)
        self.server.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[_Running]:
    r = _Running(tmp_path)
    yield r
    r.close()


def test_serve_runs_one_epoch_and_removes_its_socket(tmp_path: Path) -> None:
    world = World(1 << 30, 1 << 31, seed=1)
    world.add_vm("vm", 1, 16 << 20, 64 << 20)
    sock = tmp_path / "once.sock"
    cfg = config.loads(f'[guest]\nbackend = "emu"\ncontrol_socket = "{sock}"\n')
    assert serve(cfg, EmuGuestBackend(world, "vm"), world.clock, once=True) == 0
    assert not sock.exists()


def test_status_json_reports_counters(
    running: _Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--json", "--socket", running.socket]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["source"] == "pebs"
    assert "pages_promoted" in st


def test_status_text_finds_the_socket_from_the_config(
    running: _Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "-c", str(running.config)]) == 0
    assert "source: pebs" in capsys.readouterr().out


def test_control_socket_is_group_accessible_only(running: _Running) -> None:
    assert os.stat(running.socket).st_mode & 0o777 == 0o660


def test_reload_asks_the_daemon_to_reread_its_config(running: _Running) -> None:
    assert cli.main(["reload", "--socket", running.socket]) == 0
    running.clock.advance(running.cfg.sampler.window_s)
    assert running.reloaded.wait(10)


def test_reload_with_config_flag_finds_the_socket(running: _Running) -> None:
    assert cli.main(["reload", "-c", str(running.config)]) == 0


def test_stop_ends_the_daemon_cleanly(running: _Running) -> None:
    assert cli.main(["stop", "-c", str(running.config)]) == 0
    running.thread.join(timeout=10)
    assert not running.thread.is_alive()


def test_signals_only_set_events() -> None:
    args = argparse.Namespace()
    old = {
        s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        cli._install_signals(args)
        os.kill(os.getpid(), signal.SIGHUP)
        assert args.reload_event.wait(5)
        os.kill(os.getpid(), signal.SIGTERM)
        assert args.stop_event.wait(5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@pytest.mark.parametrize("action", ["check", "show"])
def test_config_actions_have_help_with_examples(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", action, "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_version_prints_the_agent_version(capsys: pytest.CaptureFixture[str]) -> None:
    from agent_guest.daemon import VERSION

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hypertier-guest {VERSION}"
