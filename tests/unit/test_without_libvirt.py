"""Everything but the libvirt backend works where ``import libvirt`` fails.

Each check runs in a fresh interpreter whose ``libvirt`` module raises
ImportError (a stub first on PYTHONPATH), as on a machine without
python3-libvirt: both CLIs, the host's commands that need no libvirt, the
emulator with the real agents, and a pytest subset, whose libvirt tests skip
saying what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests/data"


@pytest.fixture(scope="module")
def no_libvirt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an interpreter in which ``import libvirt`` fails."""
    stub = tmp_path_factory.mktemp("nolibvirt")
    for name in ("libvirt", "libvirt_qemu"):
        (stub / f"{name}.py").write_text(
            f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n'
        )
    path = os.pathsep.join([str(stub), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_stub_makes_libvirt_unimportable(no_libvirt: dict[str, str]) -> None:
    proc = _run(no_libvirt, "-c", "import libvirt")
    assert proc.returncode == 1
    assert "No module named 'libvirt'" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["-m", "agent_host", "--help"], id="host-help"),
        pytest.param(["-m", "agent_host", "run", "--help"], id="host-run-help"),
        pytest.param(["-m", "agent_guest", "--help"], id="guest-help"),
        pytest.param(
            ["-c", "from emu.evaluation.cli import main; main(['--help'])"],
            id="emulator-help",
        ),
    ],
)
def test_help_works(no_libvirt: dict[str, str], argv: list[str]) -> None:
    proc = _run(no_libvirt, *argv)
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A host config on a captured one-node sysfs, the default (libvirt) backend."""
    path = tmp_path / "host.toml"
    path.write_text(f'[host]\nsysfs_root = "{DATA / "host-sysfs-1node"}"\n')
    return path


def test_host_commands_that_need_no_libvirt_work(
    no_libvirt: dict[str, str], cfg: Path
) -> None:
    tiers = _run(no_libvirt, "-m", "agent_host", "tiers", "-c", str(cfg), "--json")
    assert tiers.returncode == 0, tiers.stderr
    xml = _run(
        no_libvirt,
        *("-m", "agent_host", "vm", "define", "web1", "-c", str(cfg)),
        *("--disk", "/img/web1.qcow2"),
    )
    assert xml.returncode == 0, xml.stderr
    assert "ua-hypertier-fast" in xml.stdout


def test_the_libvirt_backend_says_what_is_missing(
    no_libvirt: dict[str, str], cfg: Path
) -> None:
    proc = _run(no_libvirt, "-m", "agent_host", "run", "--once", "-c", str(cfg))
    assert proc.returncode == 1
    assert "backend 'libvirt' is not supported here" in proc.stderr
    assert "'libvirt'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_emulator_runs_the_real_agents(no_libvirt: dict[str, str]) -> None:
    code = (
        "import emu.policies.hypertier, agent_host.daemon, agent_guest.daemon;"
        "import sys; assert 'libvirt' not in sys.modules or "
        "sys.modules['libvirt'] is None"
    )
    proc = _run(no_libvirt, "-c", code)
    assert proc.returncode == 0, proc.stderr


def test_the_tests_run_and_libvirt_tests_skip_saying_why(
    no_libvirt: dict[str, str],
) -> None:
    proc = _run(
        no_libvirt,
        *("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"),
        "tests/unit/test_host_libvirt_parsers.py",
        "tests/unit/test_host_sysfs.py",
        "tests/unit/test_host_cli.py",
        "tests/contract/test_host_backend.py",
        "tests/unit/test_guest_cli.py",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "SKIPPED" in proc.stdout
    assert "apt-get install python3-libvirt" in proc.stdout
    assert " passed" in proc.stdout
