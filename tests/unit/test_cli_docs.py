"""Shell completion and man pages made from both agents' argparse trees.

The files in packaging/ must be what hypertier_common.clidoc makes now (a stale
one fails, naming the command that regenerates it); the completion completes
in a real bash; the man pages render without a groff warning.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hypertier_common import clidoc

ROOT = Path(__file__).parents[2]
AGENTS = [pytest.param("host", id="host"), pytest.param("guest", id="guest")]


def _parser(agent: str):  # type: ignore[no-untyped-def]
    from agent_guest import cli as guest_cli
    from agent_host import cli as host_cli

    return (host_cli if agent == "host" else guest_cli).build_parser()


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize(
    ("kind", "path"),
    [
        pytest.param("bash", "packaging/completion/hypertier-{}", id="bash"),
        pytest.param("man", "packaging/man/hypertier-{}.8", id="man"),
    ],
)
def test_the_packaged_files_are_up_to_date(agent: str, kind: str, path: str) -> None:
    made = {"bash": clidoc.bash_completion, "man": clidoc.man_page}[kind](
        _parser(agent)
    )
    shipped = (ROOT / path.format(agent)).read_text()
    assert shipped == made, (
        f"{path.format(agent)} is stale: python -m hypertier_common.clidoc {kind} "
        f"agent_{agent}.cli:build_parser > {path.format(agent)}"
    )


def _complete(agent: str, *words: str) -> list[str]:
    script = ROOT / f"packaging/completion/hypertier-{agent}"
    prog = f"hypertier-{agent}"
    quoted = " ".join(f"'{w}'" for w in (prog, *words))
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=({quoted}); "
            f"COMP_CWORD={len(words)}; _hypertier_{agent}; "
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return sorted(out.stdout.split())


@pytest.mark.parametrize(
    ("agent", "words", "expected"),
    [
        pytest.param("host", ["st"], ["status", "stop"], id="command"),
        pytest.param("host", ["-v", "vm", "d"], ["define"], id="after-a-flag"),
        pytest.param(
            "host", ["run", "--backend", ""], ["emu", "libvirt"], id="choices"
        ),
        pytest.param("host", ["vm", "set", "--cl"], ["--class"], id="option"),
        pytest.param("guest", ["config", "c"], ["check"], id="group"),
        pytest.param("guest", ["status", "--j"], ["--json"], id="guest-option"),
        pytest.param("guest", ["--log-format", ""], ["json", "text"], id="global"),
    ],
)
def test_bash_completes_commands_options_and_choices(
    agent: str, words: list[str], expected: list[str]
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    assert _complete(agent, *words) == expected


def test_bash_completes_file_names_for_a_config(tmp_path: Path) -> None:
    names = _complete("guest", "config", "check", "packaging/man/hypertier-g")
    assert names == ["packaging/man/hypertier-guest.8"]
    names = _complete("host", "run", "-c", "packaging/man/hypertier-h")
    assert names == ["packaging/man/hypertier-host.8"]


@pytest.mark.parametrize("agent", AGENTS)
def test_the_man_page_renders_without_warnings(agent: str) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    page = ROOT / f"packaging/man/hypertier-{agent}.8"
    check = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (check.returncode, check.stderr) == (0, "")
    shown = subprocess.run(
        ["groff", "-man", "-Tascii", str(page)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # No overstrike (bold, underline), one space between words (justification).
    text = re.sub(r"[ \t]+", " ", re.sub(".\b", "", shown))
    for section in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "EXAMPLES"):
        assert f"\n{section}\n" in text, section
    flat = " ".join(re.sub(r"-\n\s*", "-", text).split())  # lines joined again
    assert f"(see systemctl status hypertier-{agent})" in flat


def test_the_generator_runs_as_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert clidoc.main(["bash", "agent_guest.cli:build_parser"]) == 0
    assert "complete -F _hypertier_guest hypertier-guest" in capsys.readouterr().out
