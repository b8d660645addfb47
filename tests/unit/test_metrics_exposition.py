"""Both agents' /metrics as a scraper sees it, checked by Prometheus's own
``promtool check metrics``: prometheus_client's exposition, process and build-info
metrics, tick histograms, the ``domain`` label, the index page."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from agent_guest import cmd_run as guest_run
from agent_guest import config as guest_config
from agent_host import cmd_run as host_run
from agent_host import config as host_config
from emu.backends.guest import EmuGuestBackend
from emu.backends.host import EmuHostBackend
from emu.machine import World
from emu.workloads.synthetic import Gups
from hypertier_common import VERSION
from tests.serving import host_config_file, serving

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return str(r.read().decode())


def _promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (apt-get install prometheus)")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_host_metrics_pass_promtool(short_dir: Path) -> None:
    port = _free_port()
    path = host_config_file(short_dir, f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    world = World(host_fast_bytes=2048 * MiB, host_slow_bytes=4096 * MiB)
    world.add_vm("vm0", 2, 128 * MiB, 128 * MiB, 512 * MiB, 512 * MiB)
    world.add_vm("vm1", 2, 128 * MiB, 128 * MiB, 512 * MiB, 512 * MiB)
    with serving(
        host_run.serve,
        host_config.load(path),
        EmuHostBackend(world),
        lambda: host_config.load(path),
    ) as served:
        for _ in range(3):
            served.daemon.tick()
        text = _scrape(port)
        index = _scrape(port, "/")
    assert '<a href="/metrics">' in index
    assert "process_cpu_seconds_total " in text
    assert "process_resident_memory_bytes " in text
    assert 'hypertier_host_build_info{python="' in text
    assert f'version="{VERSION}"' in text
    inf = re.search(
        r'hypertier_host_tick_duration_seconds_bucket\{le="\+Inf"\} (\S+)', text
    )
    count = re.search(r"hypertier_host_tick_duration_seconds_count (\S+)", text)
    assert inf
    assert count
    assert float(inf.group(1)) == float(count.group(1)) >= 3  # every tick observed
    assert 'hypertier_vm_allotment_current_bytes{domain="vm1",tier="slow"}' in text
    assert "vm=" not in text
    _promtool_check(text)


def test_guest_metrics_pass_promtool(short_dir: Path) -> None:
    port = _free_port()
    cfg = guest_config.loads(
        f"""
[guest]
backend = "emu"
control_socket = "{short_dir}/guest.sock"
report_interval_s = 0.1
[sampler]
window_s = 0.05
[mover]
fast_reserve_bytes = 0
[targets]
min_rss_bytes = 0
refresh_s = 0.1
[metrics]
listen = "127.0.0.1:{port}"
"""
    )
    world = World(1 << 30, 4 << 30, seed=1)
    world.add_vm("vm", 2, 16 * MiB, 64 * MiB)
    world.spawn("vm", Gups(4096, seed=1), 10**12, comm="app")
    with serving(
        guest_run.serve, cfg, EmuGuestBackend(world, "vm"), lambda: cfg
    ) as served:
        for _ in range(3):
            world.clock.advance(0.05)
            served.daemon.tick()
        text = _scrape(port)
    assert "process_cpu_seconds_total " in text
    assert f'version="{VERSION}"' in text
    assert 'hypertier_guest_sampling_source{source="' in text
    assert "hypertier_guest_epoch_duration_seconds_count " in text
    assert "hypertier_guest_samples_total " in text
    _promtool_check(text)


def test_guest_metrics_are_off_by_default() -> None:
    assert guest_config.Config().metrics.listen == ""


@pytest.mark.parametrize("listen", ["9464", "[::1:9464", "127.0.0.1:0"])
def test_guest_metrics_listen_is_checked(listen: str) -> None:
    with pytest.raises(guest_config.ConfigError, match=r"metrics\.listen"):
        guest_config.loads(f'[metrics]\nlisten = "{listen}"\n')


def test_cpu_stopwatch_charges_each_lap_to_its_step() -> None:
    from hypertier_common.metrics import CpuStopwatch

    watch = CpuStopwatch()
    sum(i * i for i in range(200_000))  # some CPU for the first step
    watch.lap("work")
    watch.lap("idle")
    watch.lap("work")
    assert list(watch.steps) == ["work", "idle"]
    assert watch.steps["work"] > 0.0 <= watch.steps["idle"]
    assert str(watch).startswith("work ")
