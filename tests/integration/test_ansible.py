"""Ansible deployment (ansible/): lint, syntax, and both roles applied for real to
Debian 12 root filesystems built with debootstrap, over the chroot connection.

In a chroot nothing runs: the roles detect it (``ansible_is_chroot``) and skip
starting services, reloading systemd/udev/sysctl and mounting tracefs (fstab only),
because those would act on this machine's init and kernel. Unit enabling works
offline and is checked. The chroot has no /sys, so the host role's tier check reads
a fake node directory (``hypertier_host_sysfs_root``) written by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # tests/integration is a rootdir of its own (no __init__.py) ...
    from ansible_support import nspawn, rootfs
    from ansible_support.playbook import ANSIBLE_DIR, PlaybookRun, run_playbook
except ModuleNotFoundError:  # ... or a package under tests/
    from tests.integration.ansible_support import nspawn, rootfs
    from tests.integration.ansible_support.playbook import (
        ANSIBLE_DIR,
        PlaybookRun,
        run_playbook,
    )

pytestmark = pytest.mark.integration
# PyYAML comes with Debian's ansible (python3-yaml), seen through the venv.
yaml = pytest.importorskip("yaml", reason="PyYAML missing (apt-get install ansible)")

REPO = ANSIBLE_DIR.parent
GUEST_CLI_MISSING = "guest CLI is not in the tree yet (agent_guest/cli.py missing)"
HOST_CLI_MISSING = "host CLI is not in the tree yet (agent_host/cli.py missing)"
GUEST_CLI_IN_TREE = (REPO / "agent_guest" / "cli.py").exists()
HOST_CLI_IN_TREE = (REPO / "agent_host" / "cli.py").exists()


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install {package})")
    return path


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "chroot and debootstrap need root: run the integration tests as root"
        )


def _ansible(
    argv: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an ansible tool with the project's ansible.cfg, output captured."""
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")},
    )


def _role_variables(role: str) -> set[str]:
    defaults = ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml"
    return set(yaml.safe_load(defaults.read_text()))


# --- static checks ---------------------------------------------------------------


def test_ansible_lint_production_profile_passes() -> None:
    lint = _need("ansible-lint", "ansible-lint")
    proc = _ansible(
        [lint, "--offline", "--profile", "production", "--nocolor", "-p"], ANSIBLE_DIR
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_playbook_syntax_check_passes() -> None:
    playbook = _need("ansible-playbook", "ansible")
    proc = _ansible(
        [playbook, "-i", "inventory/example/hosts.yml", "site.yml", "--syntax-check"],
        ANSIBLE_DIR,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("role", "group"),
    [
        pytest.param("hypertier_guest", "hypertier_guests", id="guest"),
        pytest.param("hypertier_host", "hypertier_hosts", id="host"),
    ],
)
def test_example_group_vars_document_every_role_variable(role: str, group: str) -> None:
    group_vars = ANSIBLE_DIR / "inventory" / "example" / "group_vars" / f"{group}.yml"
    assert set(yaml.safe_load(group_vars.read_text())) == _role_variables(role)


@pytest.mark.parametrize(
    ("extra", "caps", "network"),
    [
        pytest.param(
            {},
            "CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_NICE CAP_DAC_OVERRIDE",
            False,
            id="defaults",
        ),
        pytest.param(
            {"sampler": {"induce_write_faults": False}},
            "CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_NICE",
            False,
            id="no-soft-dirty",
        ),
        pytest.param(
            {"sampler": {"induce_write_faults": False, "source": "soft-dirty"}},
            "CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_NICE CAP_DAC_OVERRIDE",
            False,
            id="soft-dirty",
        ),
        pytest.param(
            {"sampler": {"induce_write_faults": False, "source": "a-bit"}},
            "CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_NICE CAP_DAC_OVERRIDE",
            False,
            id="deprecated-a-bit",
        ),
        pytest.param(
            {"sampler": {"induce_write_faults": False}, "metrics": {"listen": ":9465"}},
            "CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_NICE",
            True,
            id="metrics",
        ),
    ],
)
def test_guest_unit_drop_in_follows_configured_options(
    extra: dict[str, Any], caps: str, network: bool, tmp_path: Path
) -> None:
    text = _render_drop_in(
        "hypertier_guest",
        "hypertier-guest.options.conf.j2",
        {"hypertier_guest_config_extra": extra},
        tmp_path,
    )
    assert f"\nAmbientCapabilities={caps}\n" in text
    assert f"\nCapabilityBoundingSet={caps}\n" in text
    assert ("\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n" in text) is network
    assert ("\nPrivateNetwork=no\n" in text) is network


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9464"])
def test_host_unit_drop_in_opens_the_network_only_for_metrics(
    listen: str, tmp_path: Path
) -> None:
    extra = {"metrics": {"listen": listen}} if listen else {}
    text = _render_drop_in(
        "hypertier_host",
        "hypertier-host.options.conf.j2",
        {"hypertier_host_config_extra": extra},
        tmp_path,
    )
    assert ("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in text) is bool(listen)


def _render_drop_in(
    role_name: str, template: str, extra_vars: dict[str, Any], tmp_path: Path
) -> str:
    playbook = _need("ansible-playbook", "ansible")
    role = ANSIBLE_DIR / "roles" / role_name
    out = tmp_path / "options.conf"
    play = [
        {
            "name": "Render the drop-in",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [
                str(role / "defaults/main.yml"),
                str(role / "vars/main.yml"),
            ],
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.template": {
                        "src": str(role / "templates" / template),
                        "dest": str(out),
                        "mode": "0644",
                    },
                }
            ],
        }
    ]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "vars.json").write_text(json.dumps(extra_vars))
    proc = _ansible(
        [
            playbook,
            "-i",
            "localhost,",
            "-e",
            f"@{tmp_path / 'vars.json'}",
            str(tmp_path / "render.yml"),
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_text()


# --- fixtures for real runs --------------------------------------------------------


@pytest.fixture(scope="session")
def base_tarball() -> Path:
    _need_root()
    _need("ansible-playbook", "ansible")
    _need("chroot", "coreutils")
    try:
        return rootfs.base_tarball()
    except rootfs.RootfsUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the tree (others edit it meanwhile)."""
    src = tmp_path_factory.mktemp("src") / "hypertier"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "tests",
            "ansible",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (found,) = out.glob("hypertier-*.whl")
    return found


@pytest.fixture
def fresh_rootfs(base_tarball: Path, tmp_path: Path) -> Iterator[Path]:
    scratch = rootfs.scratch_dir(tmp_path)
    yield rootfs.unpack(base_tarball, scratch / "rootfs")
    rootfs.remove(scratch)


class Applied:
    """A role applied twice to one rootfs."""

    def __init__(self, root: Path, first: PlaybookRun, second: PlaybookRun) -> None:
        self.root = root
        self.host = str(root)
        self.first = first
        self.second = second

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def _role_vars(which: str, wheel: Path) -> dict[str, Any]:
    """The test's variables for the ``which`` ("guest", "host") role, with the wheel."""
    role_vars = GUEST_VARS if which == "guest" else HOST_VARS
    return {**role_vars, f"hypertier_{which}_wheel": str(wheel)}


def _apply_twice(
    which: str,
    base_tarball: Path,
    wheel: Path,
    tmp_path_factory: pytest.TempPathFactory,
    prepare: Any = None,
) -> Iterator[Applied]:
    """The ``which`` role applied twice to a fresh rootfs (the first run must pass)."""
    workdir = tmp_path_factory.mktemp(which)
    group, extra_vars = f"hypertier_{which}s", _role_vars(which, wheel)
    scratch = rootfs.scratch_dir(workdir)
    try:
        root = rootfs.unpack(base_tarball, scratch / "rootfs")
        if prepare is not None:
            prepare(root)
        first = run_playbook(root, group, extra_vars, workdir)
        assert first.returncode == 0, first.failure_messages() or first.stderr
        second = run_playbook(root, group, extra_vars, workdir)
        yield Applied(root, first, second)
    finally:
        rootfs.remove(scratch)


GUEST_VARS: dict[str, Any] = {
    "hypertier_guest_validate_config": GUEST_CLI_IN_TREE,
    "hypertier_guest_disable_kernel_tiering": True,
    "hypertier_guest_sampler_rate_hz": 1000,
    "hypertier_guest_config_extra": {
        "targets": {"comm_pattern": "^stress"},
        "classify": {"max_ranges": 4096},
    },
}


@pytest.fixture(scope="module")
def guest(
    base_tarball: Path, wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Applied]:
    yield from _apply_twice("guest", base_tarball, wheel, tmp_path_factory)


def _fake_node_sysfs(root: Path, base: str, cpulists: list[str]) -> None:
    """NUMA nodes under ``root``/``base`` as the kernel shows them."""
    for node, cpus in enumerate(cpulists):
        d = root / base.lstrip("/") / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal: 8388608 kB\n")


HOST_VARS: dict[str, Any] = {
    "hypertier_host_validate_config": HOST_CLI_IN_TREE,
    "hypertier_host_sysfs_root": "/srv/fake-sys",
    "hypertier_host_policy_interval_s": 2,
    "hypertier_host_config_extra": {"metrics": {"listen": "127.0.0.1:9464"}},
    "hypertier_host_vms": [
        {
            "name": "vm-gold-01",
            "vcpus": 2,
            "qos_class": "gold",
            "fast_mib": 1024,
            "slow_mib": 1024,
            "fast_max_mib": 2048,
            "slow_max_mib": 4096,
            "disk": "/var/lib/libvirt/images/vm-gold-01.qcow2",
        }
    ],
}


@pytest.fixture(scope="module")
def host(
    base_tarball: Path, wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Applied]:
    # Node 1 has memory and no CPUs: a slow tier (CXL-like).
    yield from _apply_twice(
        "host",
        base_tarball,
        wheel,
        tmp_path_factory,
        prepare=lambda root: _fake_node_sysfs(root, "/srv/fake-sys", ["0", ""]),
    )


# --- guest role --------------------------------------------------------------------


def test_guest_role_installs_agent_into_venv(guest: Applied) -> None:
    venv = guest.file("/opt/hypertier")
    assert (venv / "bin" / "hypertier-guest").exists()
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert os.readlink(guest.file("/usr/local/bin/hypertier-guest")) == (
        "/opt/hypertier/bin/hypertier-guest"
    )


def test_guest_config_maps_role_variables_to_keys(guest: Applied) -> None:
    config = tomllib.loads(guest.file("/etc/hypertier/guest.toml").read_text())
    assert config == {
        "guest": {
            "backend": "linux",
            "control_socket": "/run/hypertier/guest.sock",
            "channel_path": "/dev/virtio-ports/org.hypertier.0",
        },
        "sampler": {"source": "auto", "window_s": 1.0, "rate_hz": 1000},
        "mover": {"max_bandwidth_mib_s": 200, "batch_pages": 512},
        "targets": {"min_rss_bytes": 67108864, "comm_pattern": "^stress"},
        "classify": {"max_ranges": 4096},
    }


@pytest.mark.parametrize(
    ("which", "in_tree", "missing"),
    [
        pytest.param("guest", GUEST_CLI_IN_TREE, GUEST_CLI_MISSING, id="guest"),
        pytest.param("host", HOST_CLI_IN_TREE, HOST_CLI_MISSING, id="host"),
    ],
)
def test_config_check_passes_inside_chroot(
    which: str, in_tree: bool, missing: str, request: pytest.FixtureRequest
) -> None:
    if not in_tree:
        pytest.skip(missing)
    applied: Applied = request.getfixturevalue(which)
    proc = subprocess.run(
        [
            "chroot",
            applied.host,
            f"/opt/hypertier/bin/hypertier-{which}",
            "config",
            "check",
            f"/etc/hypertier/{which}.toml",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_guest_unit_installed_as_packaged(guest: Applied) -> None:
    unit = guest.file("/etc/systemd/system/hypertier-guest.service").read_text()
    assert unit == (REPO / "packaging/systemd/hypertier-guest.service").read_text()
    drop_in = guest.file("/etc/systemd/system/hypertier-guest.service.d/options.conf")
    caps = "CAP_PERFMON CAP_SYS_PTRACE CAP_SYS_NICE CAP_DAC_OVERRIDE"
    assert f"\nAmbientCapabilities={caps}\n" in drop_in.read_text()


@pytest.mark.parametrize("which", ["guest", "host"])
def test_unit_passes_systemd_analyze_verify(
    which: str, request: pytest.FixtureRequest
) -> None:
    applied: Applied = request.getfixturevalue(which)
    # systemd-analyze verify works offline: unit syntax, ExecStart, User=, ...
    proc = subprocess.run(
        [
            "chroot",
            applied.host,
            "systemd-analyze",
            "verify",
            f"/etc/systemd/system/hypertier-{which}.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_guest_unit_enabled_offline(guest: Applied) -> None:
    wants = guest.file("/etc/systemd/system/multi-user.target.wants")
    assert os.readlink(wants / "hypertier-guest.service") == (
        "/etc/systemd/system/hypertier-guest.service"
    )


def test_guest_service_start_skipped_in_chroot(guest: Applied) -> None:
    # Nothing runs in a chroot (and systemctl there would talk to this machine).
    result = guest.first.task(
        "Set the agent's run state (not in a chroot, where nothing runs)", guest.host
    )
    assert result.get("skipped") is True


def test_guest_kernel_settings_written(guest: Applied) -> None:
    sysctl = guest.file("/etc/sysctl.d/60-hypertier-guest.conf").read_text().split()
    assert sysctl == ["kernel.perf_event_paranoid=2", "kernel.numa_balancing=0"]
    tmpfiles = guest.file("/etc/tmpfiles.d/hypertier-guest.conf").read_text()
    assert "w /sys/kernel/mm/numa/demotion_enabled - - - - false" in tmpfiles


def test_guest_tracefs_in_fstab(guest: Applied) -> None:
    fstab = guest.file("/etc/fstab").read_text().splitlines()
    (entry,) = [line.split() for line in fstab if "tracefs" in line]
    assert entry[:3] == ["tracefs", "/sys/kernel/tracing", "tracefs"]
    assert "mode=0750" in entry[3]


def _check_mode_on_fresh_system(
    root: Path, which: str, wheel: Path, tmp_path: Path
) -> PlaybookRun:
    """What an operator runs first (README): --check on a machine without
    HyperTier. It succeeds and writes nothing."""
    run = run_playbook(
        root, f"hypertier_{which}s", _role_vars(which, wheel), tmp_path, check=True
    )
    assert run.returncode == 0, run.failure_messages() or run.stderr
    assert not (root / "etc" / "hypertier").exists()
    return run


def test_guest_role_check_mode_on_fresh_system_succeeds(
    fresh_rootfs: Path, wheel: Path, tmp_path: Path
) -> None:
    _check_mode_on_fresh_system(fresh_rootfs, "guest", wheel, tmp_path)


@pytest.mark.parametrize("which", ["guest", "host"])
def test_second_run_changes_nothing(which: str, request: pytest.FixtureRequest) -> None:
    applied: Applied = request.getfixturevalue(which)
    stats = applied.second.stats(applied.host)
    assert (stats["changed"], stats["failures"]) == (0, 0)


# --- host role ---------------------------------------------------------------------


def test_host_role_installs_agent_and_libvirt(host: Applied) -> None:
    assert host.file("/opt/hypertier/bin/hypertier-host").exists()
    assert host.file("/usr/sbin/libvirtd").exists()
    assert host.file("/usr/bin/qemu-system-x86_64").exists()


def test_host_config_maps_role_variables_to_keys(host: Applied) -> None:
    config = tomllib.loads(host.file("/etc/hypertier/host.toml").read_text())
    assert config["host"] == {
        "backend": "libvirt",
        "uri": "qemu:///system",
        "control_socket": "/run/hypertier/host.sock",
        "channel_dir": "/run/hypertier/channels",
        "sysfs_root": "/srv/fake-sys",
        "fast_nodes": [],
        "slow_nodes": [],
        "emulate_slow_tier": False,
    }
    assert config["policy"] == {"interval_s": 2.0, "slow_overcommit_ratio": 1.0}
    assert config["classes"] == {
        "gold": {"weight": 4.0},
        "silver": {"weight": 2.0},
        "bronze": {"weight": 1.0},
        "standard": {"weight": 1.0},
    }


def test_host_units_enabled_offline(host: Applied) -> None:
    wants = host.file("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "hypertier-host.service").is_symlink()
    assert (wants / "libvirtd.service").is_symlink()


def test_host_unit_and_tmpfiles_installed_as_packaged(host: Applied) -> None:
    for installed, packaged in (
        (
            "/etc/systemd/system/hypertier-host.service",
            "systemd/hypertier-host.service",
        ),
        ("/etc/tmpfiles.d/hypertier-host.conf", "tmpfiles.d/hypertier-host.conf"),
    ):
        text = (REPO / "packaging" / packaged).read_text()
        assert host.file(installed).read_text() == text


def test_host_vm_xml_rendered_by_agent_and_define_skipped_in_chroot(
    host: Applied,
) -> None:
    rendered = host.first.task("Render the tiered domain XML with the agent", host.host)
    xml = rendered["results"][0]["stdout"]
    assert "<name>vm-gold-01</name>" in xml
    assert "nodeset='1'" in xml or 'nodeset="1"' in xml
    # The channel socket is where `vm define` puts it, in the role's channel_dir.
    assert "/run/hypertier/channels/vm-gold-01.org.hypertier.0" in xml
    define = host.first.task(
        "Define the tiered VMs in libvirt (not in a chroot, where libvirtd is not "
        "running)",
        host.host,
    )
    assert define["results"][0].get("skipped") is True


def test_host_tiers_found_by_the_agent(host: Applied) -> None:
    report = host.first.task("Report the tiers", host.host)
    assert "fast tier nodes [0]" in report["msg"]
    assert "slow tier nodes [1]" in report["msg"]


def _run_on_one_node(
    host: Applied,
    wheel: Path,
    tmp_path: Path,
    extra_vars: dict[str, Any],
    check: bool = False,
) -> PlaybookRun:
    """The host role again, on a fake sysfs with node 0 only (CPUs and memory),
    ``extra_vars`` added to the role's variables."""
    if not (host.root / "srv/fake-sys-1node").exists():
        _fake_node_sysfs(host.root, "/srv/fake-sys-1node", ["0"])
    return run_playbook(
        host.root,
        "hypertier_hosts",
        {
            **_role_vars("host", wheel),
            "hypertier_host_sysfs_root": "/srv/fake-sys-1node",
            **extra_vars,
        },
        tmp_path,
        check=check,
    )


def test_host_role_stops_when_no_slow_tier_and_no_emulation(
    host: Applied, wheel: Path, tmp_path: Path
) -> None:
    run = _run_on_one_node(host, wheel, tmp_path, {})
    assert run.returncode != 0
    (message,) = run.failure_messages()
    assert message.startswith("No slow memory tier on ")
    assert "hypertier_host_emulate_slow_tier=true" in message
    # It stopped before writing the configuration.
    config = tomllib.loads(host.file("/etc/hypertier/host.toml").read_text())
    assert config["host"]["sysfs_root"] == "/srv/fake-sys"


def test_host_role_accepts_single_node_with_emulation(
    host: Applied, wheel: Path, tmp_path: Path
) -> None:
    run = _run_on_one_node(
        host, wheel, tmp_path, {"hypertier_host_emulate_slow_tier": True}, check=True
    )
    assert run.returncode == 0, run.failure_messages() or run.stderr
    report = run.task("Report the tiers", host.host)
    assert "slow tier emulated on nodes [0]" in report["msg"]


def test_host_role_check_mode_on_fresh_system_succeeds(
    fresh_rootfs: Path, wheel: Path, tmp_path: Path
) -> None:
    run = _check_mode_on_fresh_system(fresh_rootfs, "host", wheel, tmp_path)
    # Nothing installed yet: the tier check waits for the real run, and says so.
    report = run.task("Report the tiers", fresh_rootfs.as_posix())
    assert "checked on the real run" in report["msg"]


# --- both units under a real systemd ------------------------------------------------
# The rootfs the roles were applied to, booted with systemd as PID 1 in a container
# (systemd-nspawn): the units exactly as installed, libvirtd running in the host's
# container (QEMU/TCG; no VM is started). The container gets CAP_PERFMON and
# perf_event_open, which nspawn withholds by default, so the guest agent can sample.


def _boot(
    which: str, applied: Applied, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[nspawn.Container]:
    """The ``which`` ("guest", "host") rootfs booted in container ht-WHICH-boot."""
    if reason := nspawn.missing():
        pytest.skip(reason)
    name, log = f"ht-{which}-boot", tmp_path_factory.mktemp("boot") / f"{which}.log"
    try:
        box = nspawn.Container(
            applied.root, name, log, ("CAP_PERFMON",), ("perf_event_open",)
        )
    except nspawn.NspawnUnavailable as err:
        pytest.skip(f"cannot boot a container here: {err}")
    try:
        state = box.wait_booted()
        assert state in ("running", "degraded"), state
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def booted_host(
    host: Applied, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[nspawn.Container]:
    yield from _boot("host", host, tmp_path_factory)


@pytest.fixture(scope="module")
def booted_guest(
    guest: Applied, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[nspawn.Container]:
    yield from _boot("guest", guest, tmp_path_factory)


def _journal_mark(box: nspawn.Container) -> str:
    """A --since value for the journal entries from now on (whole seconds)."""
    since = box.run("date", "+@%s", check=True).stdout.strip()
    time.sleep(1.1)
    return since


def _wait_active(box: nspawn.Container, unit: str, timeout_s: float) -> dict[str, str]:
    """The unit's properties once it is active (READY=1 came) and running."""
    deadline = time.monotonic() + timeout_s
    props = {}
    while time.monotonic() < deadline:
        props = box.show(
            unit, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts"
        )
        if (props.get("ActiveState"), props.get("SubState")) == ("active", "running"):
            return props
        time.sleep(0.5)
    log = box.run("journalctl", "-b", "-u", unit, "--no-pager").stdout
    raise AssertionError(f"{unit} not active after {timeout_s} s: {props}\n{log}")


@pytest.mark.parametrize(
    ("which", "unit", "status"),
    [
        pytest.param("host", "hypertier-host.service", "0 tiered VM(s), ", id="host"),
        pytest.param("guest", "hypertier-guest.service", "source ", id="guest"),
    ],
)
def test_unit_reports_ready_and_its_status_line(
    which: str, unit: str, status: str, request: pytest.FixtureRequest
) -> None:
    box: nspawn.Container = request.getfixturevalue(f"booted_{which}")
    # Type=notify: active (running) only after READY=1 from the daemon.
    props = _wait_active(box, unit, 60.0)
    assert props["StatusText"].startswith(status), props
    shown = box.run("systemctl", "status", "--no-pager", unit).stdout
    assert f'Status: "{status}' in shown, shown


def test_host_metrics_served_from_the_sandbox(booted_host: nspawn.Container) -> None:
    # The options drop-in opens AF_INET for metrics.listen.
    _wait_active(booted_host, "hypertier-host.service", 60.0)
    scrape = (
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9464/metrics', timeout=10).read().decode())"
    )
    text = booted_host.run("python3", "-c", scrape).stdout
    assert "hypertier_host_build_info{" in text
    assert "process_resident_memory_bytes " in text


def test_journal_priorities_isolate_an_injected_error(
    booted_host: nspawn.Container,
) -> None:
    box, unit = booted_host, "hypertier-host.service"
    _wait_active(box, unit, 60.0)
    since = _journal_mark(box)
    config = "/etc/hypertier/host.toml"
    box.run("cp", config, "/root/host.toml.good", check=True)
    try:
        box.run("sh", "-c", f"echo 'policy = 1' >> {config}", check=True)
        box.run("systemctl", "reload", unit, check=True)
        deadline = time.monotonic() + 30.0
        errors: list[str] = []
        while time.monotonic() < deadline and not errors:
            errors = box.run(
                "journalctl",
                f"--since={since}",
                "-p",
                "err",
                "-u",
                unit,
                "-o",
                "cat",
                "--no-pager",
            ).stdout.splitlines()
            time.sleep(0.5)
    finally:
        box.run("cp", "/root/host.toml.good", config, check=True)
    assert len(errors) == 1, errors
    assert "reload failed, keeping the old configuration" in errors[0]
    # INFO lines reach the journal at info priority, not at err.
    info = box.run(
        "journalctl", "-b", "-p", "info", "-u", unit, "-o", "cat", "--no-pager"
    ).stdout
    assert "host daemon started" in info
    assert box.show(unit, "ActiveState")["ActiveState"] == "active"


@pytest.mark.parametrize(
    ("which", "unit"),
    [
        pytest.param("host", "hypertier-host.service", id="host"),
        pytest.param("guest", "hypertier-guest.service", id="guest"),
    ],
)
def test_stalled_daemon_is_killed_by_the_watchdog_and_restarted(
    which: str, unit: str, request: pytest.FixtureRequest
) -> None:
    box: nspawn.Container = request.getfixturevalue(f"booted_{which}")
    before = _wait_active(box, unit, 60.0)
    since = _journal_mark(box)
    # The whole process stops, so its loop sends no WATCHDOG=1 (that only the loop
    # sends them is tests/unit/test_systemd.py's part).
    box.run("kill", "-STOP", before["MainPID"], check=True)
    deadline = time.monotonic() + 90.0  # WatchdogSec=30s, RestartSec=5s
    after = before
    while time.monotonic() < deadline:
        after = box.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
        if (
            after["MainPID"] not in ("0", before["MainPID"])
            and after["ActiveState"] == "active"
        ):
            break
        time.sleep(1.0)
    journal = box.run(
        "journalctl", f"--since={since}", "-u", unit, "-o", "cat", "--no-pager"
    ).stdout
    assert "Watchdog timeout" in journal, journal
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    _wait_active(box, unit, 60.0)
