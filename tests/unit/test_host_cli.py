"""The hypertier-host CLI, control socket and metrics, end to end on the emulator."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_host import cli, cmd_run, config
from agent_host.allotments import parse_allotments
from agent_host.backend import Tier
from agent_host.daemon import Daemon
from agent_host.errors import ERROR_KINDS, NoSuchDomain
from agent_host.metadata import parse_metadata
from agent_host.metrics import MetricsServer, render
from emu.backends.host import EmuHostBackend
from emu.clock import FakeClock
from emu.machine import World
from hypertier_common.control import ControlClient
from hypertier_common.errors import BackendError, ConfigError, NotRunning
from hypertier_common.signals import Signals
from tests import DATA, serving
from tests.needs import requires_libvirt
from tests.serving import TIMEOUT_S, host_config_file

MiB = 1 << 20


def _clock() -> FakeClock:
    """Virtual time that moves only when a test advances it: a served daemon
    ticks once at start and then waits; tests tick it directly."""
    return FakeClock(advance_on_wait=False)


@dataclass
class Running:
    daemon: Daemon
    world: World
    config_path: Path
    thread: threading.Thread


def _client(path: Path) -> ControlClient:
    return ControlClient(config.load(path).host.control_socket, ERROR_KINDS)


def _serve(
    path: Path, world: World, signals: Signals | None = None
) -> tuple[threading.Thread, Daemon]:
    """``cmd_run.serve`` on the emulator in a thread; returns once it is ready."""
    served = serving.start(
        cmd_run.serve,
        config.load(path),
        EmuHostBackend(world),
        lambda: config.load(path),
        signals,
    )
    return served.thread, served.daemon


@pytest.fixture
def running(short_dir: Path) -> Iterator[Running]:
    """A daemon serving its control socket; stopped (via the socket) at the end."""
    path = host_config_file(short_dir)
    cfg = config.load(path)
    world = World(host_fast_bytes=2048 * MiB, host_slow_bytes=4096 * MiB)
    world.add_vm("vm0", 2, 128 * MiB, 128 * MiB, 512 * MiB, 512 * MiB)
    thread, daemon = _serve(path, world)
    daemon.tick()
    yield Running(daemon, world, path, thread)
    if thread.is_alive():
        ControlClient(cfg.host.control_socket, ERROR_KINDS).call("stop")
    thread.join(TIMEOUT_S)
    assert not thread.is_alive()


def test_config_check_accepts_valid_file(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = host_config_file(short_dir)
    assert cli.main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_config_check_rejects_typo_with_exit_2(short_dir: Path) -> None:
    path = host_config_file(short_dir, "interval_ms = 3\n")
    assert cli.main(["config", "check", str(path)]) == 2


def test_config_show_prints_loadable_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["config", "show"]) == 0
    assert config.loads(capsys.readouterr().out) == config.Config()


def test_config_show_with_file_round_trips(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = host_config_file(short_dir)
    assert cli.main(["-v", "config", "show", "-c", str(path)]) == 0
    assert config.loads(capsys.readouterr().out) == config.load(path)


def test_status_through_socket(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "-c", str(running.config_path)]) == 0
    out = capsys.readouterr().out
    assert "vm0" in out
    assert "fast capacity 2048 MiB" in out


def test_status_json(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--json", "-c", str(running.config_path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["vms"]["vm0"]["tiers"]["fast"]["requested_bytes"] == 128 * MiB


def test_vm_set_every_flag(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["vm", "set", "vm0", "-c", str(running.config_path), "--class", "gold"]
    argv += ["--fast-reservation-mib", "200", "--slow-reservation-mib", "100"]
    argv += ["--fast-limit-mib", "400", "--slow-limit-mib", "300"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class"] == "gold"
    assert result["tiers"]["fast"] == {
        "reservation_bytes": 200 * MiB,
        "limit_bytes": 400 * MiB,
    }
    assert result["tiers"]["slow"]["limit_bytes"] == 300 * MiB


def test_vm_set_unknown_vm_is_runtime_error(running: Running) -> None:
    argv = ["vm", "set", "ghost", "--class", "gold", "-c", str(running.config_path)]
    assert cli.main(argv) == 1


def test_vm_set_bad_value_is_usage_error(running: Running) -> None:
    argv = ["vm", "set", "vm0", "--fast-limit-mib", "99999"]
    assert cli.main([*argv, "-c", str(running.config_path)]) == 2


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("24.0", id="float"),
        pytest.param("1.5", id="fraction"),
        pytest.param("-1", id="negative"),
    ],
)
def test_vm_set_mib_flag_must_be_whole_number(
    running: Running, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["vm", "set", "vm0", "--fast-limit-mib", value]
    assert cli.main([*argv, "-c", str(running.config_path)]) == 2
    assert "whole number of MiB" in capsys.readouterr().err
    assert 'limit_bytes="' + value not in running.world.metadata["vm0"]


@pytest.mark.parametrize(
    "flag",
    [
        pytest.param("--fast-mib", id="fast"),
        pytest.param("--slow-max-mib", id="slow-max"),
    ],
)
def test_vm_define_mib_flag_must_be_whole_number(
    short_dir: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*_define_argv(host_config_file(short_dir)), flag, "24.0"]) == 2
    assert "whole number of MiB" in capsys.readouterr().err


def test_vm_set_integral_float_over_socket_is_stored_as_int(running: Running) -> None:
    client = _client(running.config_path)
    result = client.call("vm_set", vm="vm0", fast_limit_bytes=400.0 * MiB)
    assert result["tiers"]["fast"]["limit_bytes"] == 400 * MiB
    xml = running.world.metadata["vm0"]
    assert f'limit_bytes="{400 * MiB}"' in xml
    assert ".0" not in xml
    restarted = Daemon(
        config.load(running.config_path), EmuHostBackend(running.world), _clock()
    )
    restarted.tick()
    fast = restarted.status()["vms"]["vm0"]["tiers"]["fast"]
    assert fast["limit_bytes"] == 400 * MiB


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(400 * MiB + 0.5, id="fraction"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(str(400 * MiB), id="string"),
        pytest.param(True, id="bool"),
    ],
)
def test_vm_set_non_integer_bytes_over_socket_is_rejected(
    running: Running, value: object
) -> None:
    client = _client(running.config_path)
    before = running.world.metadata["vm0"]
    with pytest.raises(ConfigError, match=r"fast_limit_bytes.*whole number of bytes"):
        client.call("vm_set", vm="vm0", fast_limit_bytes=value)
    assert running.world.metadata["vm0"] == before


def test_client_maps_errors(running: Running) -> None:
    client = _client(running.config_path)
    with pytest.raises(NoSuchDomain) as info:
        client.call("vm_set", vm="ghost")
    assert info.value.vm == "ghost"
    with pytest.raises(ConfigError, match="unknown method"):
        client.call("format_disk")
    with pytest.raises(ConfigError, match="status: got an unexpected keyword"):
        client.call("status", verbose=True)
    with pytest.raises(ConfigError, match="qos_class must be a string"):
        client.call("vm_set", vm="vm0", qos_class=["gold"])


def test_control_socket_mode_is_0660(running: Running) -> None:
    sock = config.load(running.config_path).host.control_socket
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660


def test_reload_applies_changed_file(running: Running) -> None:
    text = running.config_path.read_text() + "\n[classes.standard]\nweight = 9\n"
    running.config_path.write_text(text)
    assert cli.main(["reload", "-c", str(running.config_path)]) == 0
    running.daemon.tick()
    assert running.daemon.status()["vms"]["vm0"]["weight"] == 9.0


def test_reload_keeps_old_config_on_error(running: Running) -> None:
    client = _client(running.config_path)
    running.config_path.write_text(running.config_path.read_text() + "[bogus]\n")
    with pytest.raises(ConfigError, match="bogus"):
        client.call("reload")
    running.daemon.tick()
    assert running.daemon.status()["vms"]["vm0"]["weight"] == 1.0


def test_hup_and_term_events_reload_and_stop(short_dir: Path) -> None:
    path = host_config_file(short_dir)
    world = World(host_fast_bytes=1024 * MiB, host_slow_bytes=1024 * MiB)
    world.add_vm("vm0", 1, 128 * MiB, 128 * MiB, 256 * MiB, 256 * MiB)
    signals = Signals()
    thread, daemon = _serve(path, world, signals)
    path.write_text(path.read_text() + "\n[classes.standard]\nweight = 5\n")
    signals.request_reload()  # what SIGHUP does
    signals.request_stop()  # what SIGTERM does
    thread.join(TIMEOUT_S)
    assert not thread.is_alive()
    daemon.tick()
    assert daemon.status()["vms"]["vm0"]["weight"] == 5.0


def test_stop_ends_run(running: Running) -> None:
    assert cli.main(["stop", "-c", str(running.config_path)]) == 0
    running.thread.join(TIMEOUT_S)
    assert not running.thread.is_alive()


@requires_libvirt
def test_run_once_on_libvirt_test_driver(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = host_config_file(short_dir)
    # The example of `run --help`, with a configuration for the test driver.
    assert "hypertier-host run --backend libvirt --once -v\n" in cmd_run.EPILOG
    argv = ["run", "--backend", "libvirt", "--once", "-v", "-c", str(path)]
    assert cli.main(argv) == 0
    assert logging.getLogger().level == logging.DEBUG
    out = capsys.readouterr().out
    assert "backend libvirt" in out
    assert "slow tier EMULATED" in out


def test_run_with_emu_backend_is_usage_error(short_dir: Path) -> None:
    path = host_config_file(short_dir)
    assert cli.main(["run", "-c", str(path), "--backend", "emu", "--once"]) == 2


def test_run_with_bad_config_is_usage_error(short_dir: Path) -> None:
    path = host_config_file(short_dir, "slow_overcommit_ratio = 0\n")
    assert cli.main(["run", "-c", str(path), "--once"]) == 2


def test_metrics_render_has_tiers_and_stats(running: Running) -> None:
    text = render(running.daemon.status(), running.daemon.domain_stats())
    assert 'hypertier_vm_allotment_requested_bytes{domain="vm0",tier="fast"}' in text
    assert 'hypertier_vm_remote_tlb_flush_total{domain="vm0"}' in text
    assert "hypertier_vm_guest_hot_bytes" not in text  # no report yet: omitted


def test_metrics_server_serves_text() -> None:
    server = MetricsServer("127.0.0.1:0", lambda: "up 1\n")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == b"up 1\n"
            assert resp.headers["Content-Type"].startswith("text/plain")
    finally:
        server.close()


def _scrape_served(path: Path, listen: str) -> bytes:
    """/metrics at ``listen`` of a daemon served on the config file ``path``."""
    cfg = config.load(path)
    world = World(host_fast_bytes=1024 * MiB, host_slow_bytes=1024 * MiB)
    with (
        serving.serving(cmd_run.serve, cfg, EmuHostBackend(world), lambda: cfg),
        urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp,
    ):
        return bytes(resp.read())


def test_serve_starts_metrics_when_configured(short_dir: Path) -> None:
    path = host_config_file(short_dir)
    path.write_text(path.read_text() + '\n[metrics]\nlisten = "127.0.0.1:19464"\n')
    assert b"hypertier_host_ticks_total" in _scrape_served(path, "127.0.0.1:19464")


def test_ipv6_metrics_listen_passes_check_and_serves_on_it(short_dir: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError as err:
            pytest.skip(f"no IPv6 loopback on this machine (bind [::1]: {err})")
        port = probe.getsockname()[1]
    path = host_config_file(short_dir)
    path.write_text(path.read_text() + f'\n[metrics]\nlisten = "[::1]:{port}"\n')
    assert cli.main(["config", "check", str(path)]) == 0
    assert b"hypertier_host_ticks_total" in _scrape_served(path, f"[::1]:{port}")


def test_serve_on_a_busy_metrics_port_fails_before_the_control_socket(
    short_dir: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = host_config_file(short_dir)
        path.write_text(
            path.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        )
        cfg = config.load(path)
        world = World(host_fast_bytes=1024 * MiB, host_slow_bytes=1024 * MiB)
        with pytest.raises(BackendError, match=f"metrics.listen 127.0.0.1:{port}"):
            cmd_run.serve(cfg, EmuHostBackend(world), _clock(), lambda: cfg)
    assert not Path(cfg.host.control_socket).exists()


def _sysfs_two_nodes(root: Path) -> Path:
    for node, cpus in ((0, "0-3"), (1, "")):
        d = root / f"sys/devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal: 8388608 kB\n")
    return root


def _define_argv(path: Path, *extra: str) -> list[str]:
    return [
        "vm",
        "define",
        "web1",
        "-c",
        str(path),
        "--disk",
        "/img/web1.qcow2",
        *extra,
    ]


def test_vm_define_prints_xml_with_emulated_slow_tier_note(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_define_argv(host_config_file(short_dir))) == 0
    out, err = capsys.readouterr()
    assert "ua-hypertier-fast" in out
    assert "slow tier is emulated" in err


def test_vm_define_every_size_flag_to_file(short_dir: Path) -> None:
    path = host_config_file(short_dir)
    path.write_text(
        path.read_text().replace(
            str(DATA / "host-sysfs-1node"), str(_sysfs_two_nodes(short_dir / "s"))
        )
    )
    out = short_dir / "web1.xml"
    argv = _define_argv(path, "--vcpus", "4", "--fast-mib", "512", "--slow-mib")
    argv += ["256", "--fast-max-mib", "2048", "--slow-max-mib", "1024", "--class"]
    argv += ["gold", "--domain-type", "qemu", "-o", str(out)]
    assert cli.main(argv) == 0
    xml = out.read_text()
    fast, slow = parse_allotments(xml)
    assert (fast.requested_bytes, fast.max_bytes) == (512 * MiB, 2048 * MiB)
    assert (slow.requested_bytes, slow.max_bytes, slow.host_nodes) == (
        256 * MiB,
        1024 * MiB,
        (1,),
    )
    meta = parse_metadata(xml)
    assert meta is not None
    assert meta.qos_class == "gold"
    domain = ET.fromstring(xml)
    assert domain.get("type") == "qemu"
    assert domain.findtext("vcpu") == "4"


def test_vm_define_unknown_class_is_usage_error(short_dir: Path) -> None:
    argv = _define_argv(host_config_file(short_dir), "--class", "platinum")
    assert cli.main(argv) == 2


def test_vm_define_without_disk_is_usage_error(short_dir: Path) -> None:
    argv = ["vm", "define", "web1", "-c", str(host_config_file(short_dir))]
    assert cli.main(argv) == 2


@requires_libvirt
def test_vm_define_defines_in_libvirt(short_dir: Path) -> None:
    from agent_host.libvirt_backend import LibvirtHostBackend

    keep = LibvirtHostBackend("test:///default", root=DATA / "host-sysfs-1node")
    try:
        argv = _define_argv(host_config_file(short_dir), "--domain-type", "qemu")
        assert cli.main([*argv, "--define"]) == 0
        assert "ua-hypertier-slow" in keep.domain_xml("web1", inactive=True)
    finally:
        keep.destroy_and_undefine("web1")
        keep.close()


@requires_libvirt
def test_vm_define_converts_existing_domain(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = host_config_file(short_dir)
    argv = ["vm", "define", "test", "-c", str(path), "--convert"]
    assert cli.main([*argv, "--domain-type", "qemu"]) == 0
    out = capsys.readouterr().out
    assert "/guest/diskimage1" in out  # kept from the test driver's domain
    assert "ua-hypertier-fast" in out


def test_client_without_daemon_raises_not_running(short_dir: Path) -> None:
    with pytest.raises(NotRunning, match="no daemon"):
        ControlClient(short_dir / "none.sock", ERROR_KINDS).call("status")


def test_vm_set_tier_mapping_reaches_daemon(running: Running) -> None:
    client = _client(running.config_path)
    client.call("vm_set", vm="vm0", slow_limit_bytes=256 * MiB)
    running.daemon.tick()
    vm = running.daemon.status()["vms"]["vm0"]
    assert vm["tiers"][Tier.SLOW.value]["limit_bytes"] == 256 * MiB


def test_tiers_json_names_the_cpu_less_node_slow(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _sysfs_two_nodes(short_dir / "s")
    argv = ["tiers", "-c", str(host_config_file(short_dir)), "--sysfs-root", str(root)]
    assert cli.main([*argv, "--json", "--no-emulate-slow-tier"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["fast_nodes"], found["slow_nodes"]) == ([0], [1])
    assert found["slow_tier_emulated"] is False
    assert [n["has_cpus"] for n in found["nodes"]] == [True, False]
    assert cli.main([*argv, "--slow-nodes", "0", "--fast-nodes", "1"]) == 0
    assert "fast tier: nodes [1]\nslow tier: nodes [0]\n" in capsys.readouterr().out


def test_tiers_without_slow_node_is_a_usage_error_unless_emulated(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tiers", "-c", str(host_config_file(short_dir)), "--json"]
    assert cli.main([*argv, "--no-emulate-slow-tier"]) == 2
    assert cli.main([*argv, "--emulate-slow-tier"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["slow_tier_emulated"] is True
    assert found["slow_nodes"] == found["fast_nodes"] == [0]
