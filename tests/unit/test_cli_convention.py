"""One CLI convention for both agents (hypertier_common.cli), tested on both.

Exit codes 0 ok, 1 runtime failure, 2 usage or configuration, 3 ``status`` with
no daemon; ``--version``; ``-v``/``-q`` before or after the subcommand; errors
as ``PROG: error: MESSAGE``; every ``--help`` has examples, and they parse.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import shlex
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent_guest import cli as guest_cli
from agent_host import cli as host_cli
from hypertier_common import cli

AGENTS = [
    pytest.param(guest_cli.AGENT, id="guest"),
    pytest.param(host_cli.AGENT, id="host"),
]


def _config(agent: cli.Agent, directory: Path, extra: str = "") -> Path:
    """A configuration whose control socket is in ``directory``."""
    table = "guest" if agent is guest_cli.AGENT else "host"
    path = directory / f"{table}.toml"
    path.write_text(f'[{table}]\ncontrol_socket = "{directory}/ctl.sock"\n{extra}')
    return path


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("agent", AGENTS)
def test_version_prints_name_and_version(
    agent: cli.Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(agent, ["--version"]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == f"{agent.prog} {agent.version}"
    # One version: the installed package's (pyproject.toml reads hypertier_common's).
    assert agent.version == importlib.metadata.version("hypertier")


@pytest.mark.parametrize("agent", AGENTS)
def test_every_help_exits_0_with_examples(
    agent: cli.Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    parsers = list(_parsers(cli.build_parser(agent)))
    assert len(parsers) >= 8
    for parser in parsers:
        words = parser.prog.split()[1:]
        assert cli.main(agent, [*words, "--help"]) == cli.EXIT_OK
        assert "examples:" in capsys.readouterr().out, parser.prog


def _examples(agent: cli.Agent) -> Iterator[list[str]]:
    for parser in _parsers(cli.build_parser(agent)):
        text = (parser.epilog or "").replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].split("|")[0].split(">")[0].strip()
            if line.startswith(agent.prog + " "):
                yield shlex.split(line)[1:]


@pytest.mark.parametrize("agent", AGENTS)
def test_every_example_in_the_help_parses(agent: cli.Agent) -> None:
    parser = cli.build_parser(agent)
    examples = list(_examples(agent))
    assert len(examples) >= 10
    for argv in examples:
        if "--help" in argv:
            continue
        parser.parse_args(argv)  # a usage error would exit 2


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["status", "--bogus"], id="unknown-flag"),
        pytest.param(["config"], id="no-subcommand"),
    ],
)
def test_usage_errors_exit_2(
    agent: cli.Agent, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(agent, argv) == cli.EXIT_USAGE
    assert f"{agent.prog}" in capsys.readouterr().err


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize(
    ("flags", "level"),
    [
        pytest.param([], logging.INFO, id="default-info"),
        pytest.param(["-v"], logging.DEBUG, id="v"),
        pytest.param(["-q"], logging.WARNING, id="q"),
        pytest.param(["-qq"], logging.ERROR, id="qq"),
        pytest.param(["-q", "-v"], logging.INFO, id="q-v"),
    ],
)
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbosity_flags_work_before_and_after_the_subcommand(
    agent: cli.Agent,
    flags: list[str],
    level: int,
    where: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = ["config", "show"]
    argv = [*flags, *sub] if where == "before" else [*sub, *flags]
    assert cli.main(agent, argv) == cli.EXIT_OK
    assert logging.getLogger().level == level


@pytest.mark.parametrize("agent", AGENTS)
def test_a_flag_before_and_one_after_the_subcommand_add_up(agent: cli.Agent) -> None:
    assert cli.main(agent, ["-q", "config", "show", "-q"]) == cli.EXIT_OK
    assert logging.getLogger().level == logging.ERROR


@pytest.mark.parametrize("agent", AGENTS)
def test_status_without_a_daemon_exits_3_with_a_systemctl_hint(
    agent: cli.Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(agent, tmp_path)
    assert cli.main(agent, ["status", "-c", str(path)]) == cli.EXIT_NOT_RUNNING
    err = capsys.readouterr().err
    assert err == (
        f"{agent.prog}: error: no daemon is running at {tmp_path}/ctl.sock "
        f"(No such file or directory); see 'systemctl status {agent.prog}'\n"
    )


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("command", ["reload", "stop"])
def test_other_requests_without_a_daemon_exit_1(
    agent: cli.Agent, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "none.sock"
    assert cli.main(agent, [command, "--socket", str(sock)]) == cli.EXIT_FAILURE
    assert "systemctl status" in capsys.readouterr().err


@pytest.mark.parametrize("agent", AGENTS)
def test_backend_emu_says_where_it_runs(
    agent: cli.Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _config(agent, tmp_path)
    argv = ["run", "-c", str(path), "--backend", "emu", "--once"]
    assert cli.main(agent, argv) == cli.EXIT_USAGE
    assert "backend 'emu' is the emulator's" in caplog.text
    assert "positional" not in caplog.text


@pytest.mark.parametrize("agent", AGENTS)
def test_config_errors_exit_2_naming_file_and_key(
    agent: cli.Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(agent, tmp_path, "bogus_key = 1\n")
    table = path.stem
    assert cli.main(agent, ["config", "check", str(path)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"{agent.prog}: error: {path}: {table}.bogus_key: unknown key\n"
    )


@pytest.mark.parametrize(
    ("agent", "argv", "text"),
    [
        pytest.param(
            guest_cli.AGENT,
            ["config", "check"],
            b'[targets]\ncomm_pattern = "caf\xe9"\n',  # Latin-1
            id="guest-check",
        ),
        pytest.param(
            guest_cli.AGENT,
            ["run", "-c"],
            b'[targets]\ncomm_pattern = "caf\xe9"\n',
            id="guest-run",
        ),
        pytest.param(
            host_cli.AGENT,
            ["config", "check"],
            b'[policy]\ndefault_class = "caf\xe9"\n',
            id="host-check",
        ),
        pytest.param(
            host_cli.AGENT,
            ["run", "--once", "-c"],
            b'[policy]\ndefault_class = "caf\xe9"\n',
            id="host-run",
        ),
    ],
)
def test_a_config_file_that_is_not_utf8_exits_2_naming_it(
    agent: cli.Agent,
    argv: list[str],
    text: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(text)
    assert cli.main(agent, [*argv, str(path)]) == cli.EXIT_USAGE
    said = capsys.readouterr().err + caplog.text  # run logs, check prints
    assert f"{path}: not UTF-8" in said
    assert "Traceback" not in said


@pytest.mark.parametrize("agent", AGENTS)
def test_config_show_round_trips(
    agent: cli.Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(agent, tmp_path)
    assert cli.main(agent, ["config", "show", "-c", str(path)]) == cli.EXIT_OK
    shown = tmp_path / "shown.toml"
    shown.write_text(capsys.readouterr().out)
    assert agent.config.load(shown) == agent.config.load(path)


@pytest.mark.parametrize("agent", AGENTS)
def test_json_log_format_writes_one_object_per_line(
    agent: cli.Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(agent, tmp_path, "bogus_key = 1\n")
    argv = ["run", "--log-format", "json", "-c", str(path)]
    assert cli.main(agent, argv) == cli.EXIT_USAGE
    rec = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rec["level"] == "ERROR"
    assert "bogus_key: unknown key" in rec["msg"]


@pytest.mark.parametrize("agent", AGENTS)
def test_a_bug_exits_1_with_a_traceback(
    agent: cli.Agent, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(cfg: object) -> str:
        raise KeyError("a bug")

    c = agent.config
    module = SimpleNamespace(
        DEFAULT_CONFIG=c.DEFAULT_CONFIG, Config=c.Config, load=c.load, dumps=broken
    )
    assert cli.main(replace(agent, config=module), ["config", "show"]) == 1
    assert "internal error (a bug" in caplog.text
    assert "Traceback" in caplog.text
