"""The end-to-end scenario on a real VM, producing one JSON report (issue 6).

Steps: libvirtd, cached image, accelerator probe, define through agent_host.domxml,
boot, topology and virtio-mem checks, a workload with a known hot set (checksummed),
the guest agent if the tree has one, live resizes of both tiers from the host (through
``agent_host.libvirt_backend`` when present), convergence of placement, telemetry
(guest tlb:tlb_flush counts from tracefs, host domstats and QEMU query-stats).
Each step records its result or the exact reason it could not run; later steps go on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent_guest.linux_procfs import numa_maps_bytes
from agent_host.backend import Tier

from . import accel as accel_mod
from . import agents, image, libvirtd, tlbtrace
from .agents import GUEST_CONFIG
from .guestlink import GuestLink, GuestLinkError
from .machine import MiB, TestVm, VmShape, log_tail

log = logging.getLogger(__name__)

WORKLOAD_STATUS = "/tmp/workload.json"
CONVERGED_SHARE = 0.9
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "virsh": "libvirt-clients",
    "libvirtd": "libvirt-daemon-system",
}


@dataclass(frozen=True)
class ScenarioConfig:
    shape: VmShape = field(default_factory=VmShape)
    hot_mib: int = 32
    cold_mib: int = 128
    boot_timeout_s: float = 300.0
    resize_timeout_s: float = 120.0
    convergence_timeout_s: float = 240.0
    steady_s: float = 45.0  # hot set placed and no page moved for this long: stop
    # (tier, requested MiB) in order; the last two return each tier to its start.
    resizes: tuple[tuple[str, int], ...] = (
        ("fast", 768),
        ("fast", 256),
        ("slow", 640),
        ("slow", 384),
    )
    # Fast-tier sizes asked through the host agent after convergence (grow, shrink).
    host_agent_fast_mib: tuple[int, ...] = (512, 256)
    # Then the fast allotment shrinks so that the guest agent's room on node 0
    # (the node's memory beside the device, plus the allotment, less what the
    # workload does not hold) is the workload's memory other than the cold set
    # less this much: the cold set has to go to the slow node (with the
    # interpreter's least used pages), the 32 MiB hot array has to stay. The
    # margin absorbs memory the rest of the guest frees after the measurement.
    # The allotment is sized from the guest's view when the squeeze starts
    # (Scenario.squeeze_fast_bytes); the boot memory of node 0 must be small
    # enough that an allotment can do it (VmShape.fast_boot_mib).
    squeeze_spare_mib: int = 8
    squeeze_timeout_s: float = 180.0
    # After `kill -9` of the guest agent (started again at once) and after a
    # restart of `hypertier-host`: the host must accept the agent's reports and
    # the agent receive its allotment within this. The guest agent's Python
    # start-up under TCG and its first full history window (4 epochs of 2 s)
    # come before its first report: ~20 s on an idle 2-core host. The rest is
    # for a host whose other work starves the TCG vCPUs (the guest console then
    # shows soft lockups of 20-70 s); a locked-out agent fails all the same,
    # and the step records the agent's own count of reports sent.
    restart_timeout_s: float = 300.0
    keep_vm: bool = False


def missing_prerequisites() -> list[str]:
    """What this machine lacks for the real-VM run, each with how to provide it."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (debootstrap, qemu:///system): run as root")
    for tool, package in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            missing.append(f"{tool}: apt-get install {package}")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        missing.append(
            "python libvirt: apt-get install python3-libvirt (scripts/setup)"
        )
    try:
        image.debian_mirror()
    except RuntimeError as err:
        missing.append(str(err))
    return missing


def report_dir() -> Path:
    return Path(os.environ.get("HYPERTIER_REPORT_DIR") or image.cache_dir() / "reports")


class Scenario:
    """Runs the steps in order; :attr:`report` collects results and skip reasons."""

    def __init__(
        self, cfg: ScenarioConfig = ScenarioConfig(), say: Callable[[str], None] = print
    ) -> None:
        self.cfg = cfg
        self.say = say
        self.report: dict[str, Any] = {"steps": {}, "skipped": {}, "errors": {}}
        self.vm: TestVm | None = None
        self.workload_pid: int | None = None
        self.agent_pid: int | None = None
        self.agent_started = 0.0
        self.workload_ready = 0.0
        self.host_agent: subprocess.Popen[bytes] | None = None
        self._start = time.monotonic()

    # -- helpers -----------------------------------------------------------------

    @property
    def link(self) -> GuestLink:
        assert self.vm is not None
        return self.vm.link

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as err:  # a harness: record, go on with the other steps
            self.report["errors"][name] = f"{type(err).__name__}: {err}"
            log.error("step %s failed:\n%s", name, traceback.format_exc())
            self.say(f"[vm] {name}: FAILED {type(err).__name__}: {err}")
            return None
        took = time.monotonic() - t0
        self.report["steps"][name] = round(took, 2)
        return result

    def skip(self, what: str, reason: str) -> None:
        self.report["skipped"][what] = reason
        self.say(f"[vm] {what}: not run: {reason}")

    def node_info(self) -> dict[str, dict[str, Any]]:
        out = self.link.sh(
            "for n in /sys/devices/system/node/node[0-9]*; do "
            'echo "${n##*/}|$(cat $n/cpulist)|'
            "$(awk '/MemTotal/{print $4}' $n/meminfo)\"; done"
        )
        nodes: dict[str, dict[str, Any]] = {}
        for line in out.splitlines():
            name, cpus, kib = line.split("|")
            nodes[name[4:]] = {"cpulist": cpus, "memtotal_kib": int(kib)}
        return nodes

    # -- steps -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        r = self.report
        r["libvirtd"] = self._step(
            "libvirtd", lambda: asdict(libvirtd.ensure_libvirtd())
        )
        base = self._step("image", image.build_base_image)
        if base is None or r["libvirtd"] is None:
            return self.finish()
        r["image"] = {
            "key": base.key,
            "cached": base.built_s is None,
            "built_s": base.built_s,
        }
        acc = accel_mod.choose(base.kernel)
        r["accel"] = asdict(acc)
        self.say(f"[vm] accelerator: {acc.name} ({acc.reason})")
        run_dir = image.cache_dir() / "runs" / self.cfg.shape.name
        run_dir.mkdir(parents=True, exist_ok=True)
        payload = self._step("payload", lambda: image.build_payload(run_dir))
        overlay = self._step("overlay", lambda: image.make_overlay(base, run_dir))
        if payload is None or overlay is None:
            return self.finish()
        self.vm = TestVm(base, acc, run_dir, self.cfg.shape)
        vm = self.vm
        if self._step("define", lambda: _defined(vm, overlay, payload)) is None:
            return self.finish()
        r["notes"] = list(vm.notes)
        boot = self._step("boot", lambda: vm.start(self.cfg.boot_timeout_s))
        if boot is None:
            r["console_tail"] = log_tail(vm.console_log)
            return self.finish()
        r["boot"] = boot
        self.say(
            f"[vm] boot: {boot['wall_s']:.1f} s wall to test driver "
            f"(guest uptime {boot['guest_uptime_s']:.1f} s, "
            f"QEMU CPU {boot['qemu_cpu_s']:.1f} s)"
        )
        self._step("topology", self.check_topology)
        self._step("tlb_trace_on", self.tlb_trace_on)
        self._step("workload_start", self.start_workload)
        self._step("guest_agent_start", self.start_guest_agent)
        self._step("resizes", self.resizes)
        self._step("host_agent_start", self.start_host_agent)
        self._step("convergence", self.convergence)
        self._step("host_agent_resizes", self.host_agent_resizes)
        self._step("squeeze", self.squeeze)
        self._step("restarts", self.restarts)
        self._step("workload_stop", self.stop_workload)
        self._step("agents_stop", self.stop_agents)
        r["tlb_flush"] = self._step("tlb_trace_read", self.tlb_trace_read)
        self._step("host_stats", self.host_stats)
        return self.finish()

    def check_topology(self) -> None:
        assert self.vm is not None
        deadline = time.monotonic() + self.cfg.resize_timeout_s
        allot = self.vm.allotments()
        while any(a.current_bytes != a.requested_bytes for a in allot.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
            allot = self.vm.allotments()
        self.report["topology"] = {
            "nodes": self.node_info(),
            "virtio_mem_loaded": "virtio_mem" in self.link.sh("cat /proc/modules"),
            "kernel": self.link.sh("uname -r").strip(),
            "allotments": {
                t.value: {
                    "requested_bytes": a.requested_bytes,
                    "current_bytes": a.current_bytes,
                    "max_bytes": a.max_bytes,
                    "guest_node": a.guest_node,
                }
                for t, a in allot.items()
            },
            "memory_block_bytes": int(
                self.link.sh("cat /sys/devices/system/memory/block_size_bytes"), 16
            ),
            "online_blocks_per_node": self.online_blocks_per_node(),
        }
        nodes = self.report["topology"]["nodes"]
        self.say(
            "[vm] guest nodes: "
            + ", ".join(
                f"node{n} cpus=[{v['cpulist']}] {v['memtotal_kib'] // 1024} MiB"
                for n, v in sorted(nodes.items())
            )
        )

    def online_blocks_per_node(self) -> dict[str, int]:
        """Online memory blocks (sysfs memory hotplug) linked from each node."""
        out = self.link.sh(
            "for n in /sys/devices/system/node/node[0-9]*; do "
            'echo "${n##*/} $(cat $n/memory[0-9]*/state | grep -c online)"; done'
        )
        return {line.split()[0][4:]: int(line.split()[1]) for line in out.splitlines()}

    def tlb_trace_on(self) -> None:
        tlbtrace.start(self.link)

    def tlb_trace_read(self) -> dict[str, int]:
        counts = tlbtrace.read(self.link)
        self.say(f"[vm] guest tlb:tlb_flush counts: {counts}")
        return counts

    def start_workload(self) -> None:
        # Kernel NUMA balancing would promote the hot pages itself; turn it off so
        # placement is the agent's doing.
        self.link.sh("echo 0 > /proc/sys/kernel/numa_balancing")
        self.workload_pid = self.link.spawn(
            f"exec python3 /opt/hypertier/workload.py --hot-mib {self.cfg.hot_mib} "
            f"--cold-mib {self.cfg.cold_mib} --hot-node 1 --cold-node 0 "
            f"--status {WORKLOAD_STATUS}",
            "/tmp/workload.log",
        )
        deadline = time.monotonic() + 120
        while True:
            out = self.link.sh(f"cat {WORKLOAD_STATUS} 2>/dev/null", check=False)
            if out.strip():
                status = json.loads(out)
                break
            if (
                self.link.wait(self.workload_pid, 0) is not None
                or time.monotonic() > deadline
            ):
                raise RuntimeError(
                    "workload did not start: "
                    + self.link.sh("cat /tmp/workload.log", check=False)
                )
            time.sleep(0.5)
        self.workload_ready = time.monotonic()
        self.report["workload_initial"] = {
            "hot_nodes": status["hot_nodes"],
            "cold_nodes": status["cold_nodes"],
            "hot_pages": status["hot_pages"],
            "cold_pages": status["cold_pages"],
        }
        self.say(
            f"[vm] workload placed: hot {status['hot_nodes']} "
            f"cold {status['cold_nodes']}"
        )

    def start_guest_agent(self) -> None:
        probe = self.link.call(
            {"op": "sh", "cmd": "hypertier-guest run --help", "timeout_s": 60}, 70
        )
        if probe.get("rc") != 0:
            why = (probe.get("err") or "").strip().splitlines()[-1:] or ["?"]
            self.skip(
                "guest_agent",
                "`hypertier-guest run` fails in the guest with this tree's wheel "
                f"(agent_guest/cli.py missing or broken: {why[0]})",
            )
            return
        assert self.workload_pid is not None
        agents.write_guest_config(self.link, self.workload_pid)
        self.link.sh(f"hypertier-guest config check {GUEST_CONFIG}")
        self.agent_pid = agents.spawn_guest_agent(self.link)
        self.agent_started = time.monotonic()
        self.report["guest_agent"] = {"pid": self.agent_pid}

    def _host_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent_host", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start_host_agent(self) -> None:
        """`hypertier-host run` on this host: reads the guest channel, sizes tiers."""
        assert self.vm is not None
        if self.agent_pid is None:
            self.skip("host_agent", "runs only with the guest agent (see guest_agent)")
            return
        cfg = agents.write_host_config(self.vm.run_dir)
        check = self._host_cli("config", "check", str(cfg))
        if check.returncode != 0:
            self.skip(
                "host_agent", f"hypertier-host config check failed: {check.stderr}"
            )
            return
        self._launch_host_agent(cfg)

    def _launch_host_agent(self, cfg: Path) -> None:
        """Start `hypertier-host run`; return once its status lists the VM."""
        assert self.vm is not None
        log_path = self.vm.run_dir / "host-agent.log"
        with log_path.open("ab") as out:
            self.host_agent = agents.spawn_host_agent(cfg, out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.host_agent.poll() is not None:
                raise RuntimeError(
                    "hypertier-host run exited rc="
                    f"{self.host_agent.returncode}: {log_tail(log_path, 20)}"
                )
            status = self._host_cli("status", "-c", str(cfg), "--json")
            if status.returncode == 0 and self.cfg.shape.name in status.stdout:
                self.report["host_agent"] = {"started": True, "log": str(log_path)}
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"hypertier-host did not adopt {self.cfg.shape.name} within 30 s: "
            + log_tail(log_path, 20)
        )

    def host_agent_resizes(self) -> None:
        """Resize the fast tier through `hypertier-host vm set` (reservation=limit)."""
        assert self.vm is not None
        if self.host_agent is None:
            self.skip(
                "host_agent_resizes", "needs the host agent running (see host_agent)"
            )
            return
        cfg = str(self.vm.run_dir / "host.toml")
        if self.host_agent.poll() is not None:
            raise RuntimeError(
                f"hypertier-host run exited rc={self.host_agent.returncode} during "
                "the run: "
                + log_tail(self.vm.run_dir / "host-agent.log", 3).replace("\n", " | ")
            )
        results = []
        for mib in self.cfg.host_agent_fast_mib:
            node = "0"
            before = self.node_info()[node]["memtotal_kib"]
            old = self.vm.allotments()[Tier.FAST].requested_bytes
            t0 = time.monotonic()
            # Order matters: a limit below the reservation is rejected.
            args = (
                ["--fast-limit-mib", str(mib), "--fast-reservation-mib", str(mib)]
                if mib * MiB >= old
                else ["--fast-reservation-mib", str(mib), "--fast-limit-mib", str(mib)]
            )
            done = self._host_cli("vm", "set", "-c", cfg, self.cfg.shape.name, *args)
            if done.returncode != 0:
                raise RuntimeError(f"hypertier-host vm set failed: {done.stderr}")
            want = mib * MiB
            entry = {
                "tier": "fast",
                **self._await_resize(Tier.FAST, node, old, want, before, t0, 0.2),
                "started_at_s": round(t0 - self.workload_ready, 2),
                "path": "hypertier-host vm set (daemon policy, then resize)",
            }
            results.append(entry)
            self.say(
                f"[vm] host-agent resize fast {old // MiB}->{mib} MiB: host <current> "
                f"after {entry['host_current_s']} s, guest node0 {before // 1024}->"
                f"{entry['node_memtotal_kib_after'] // 1024} MiB after "
                f"{entry['guest_seen_s']} s"
            )
        self.report["host_agent_resizes"] = results
        self.report["guest_agent_log_allots"] = self.link.sh(
            "grep -E 'allots|demot|promot' /tmp/agent.log | tail -n 20", check=False
        )

    def squeeze(self) -> None:
        """Shrink the fast tier through the host agent; wait for placement again."""
        if self.host_agent is None or "host_agent_resizes" not in self.report:
            why = "needs the host agent's resizes to work (see host_agent_resizes)"
            self.skip("placement_squeezed", why)
            self.report["skipped"].setdefault("demote_before_shrink", why)
            return
        want, sizing = self.squeeze_fast_bytes()
        self.report["squeeze_sizing"] = sizing
        saved = self.cfg
        self.cfg = replace(saved, host_agent_fast_mib=(want // MiB,))
        try:
            before = self.report.pop("host_agent_resizes")
            self.host_agent_resizes()
            squeeze = self.report.pop("host_agent_resizes")
            self.report["host_agent_resizes"] = before
            self.report["squeeze_resize"] = squeeze[0]
        finally:
            self.cfg = saved
        t0 = time.monotonic()
        status = self._wait_placement(t0 + self.cfg.squeeze_timeout_s)
        hot_share, cold_share = _shares(status)
        self.report["placement_squeezed"] = {
            "fast_requested_mib": want // MiB,
            "waited_s": round(time.monotonic() - t0, 1),
            "hot_share_on_fast": round(hot_share, 4),
            "cold_share_on_slow": round(cold_share, 4),
            "hot_nodes": status["hot_nodes"],
            "cold_nodes": status["cold_nodes"],
            "node_info": self.node_info(),
            "agent_log_tail": self.link.sh("tail -n 20 /tmp/agent.log", check=False),
            # the agent's first epochs after the squeeze's Allot (its last one)
            "agent_log_squeeze": self.link.sh(
                "tac /tmp/agent.log | sed '/host allots/q' | tac | head -n 40",
                check=False,
            ),
        }
        self._demote_order(status)
        self.say(
            f"[vm] fast tier squeezed to {want // MiB} MiB allotment: "
            f"after {time.monotonic() - t0:.1f} s hot on fast {hot_share:.1%}, "
            f"cold on slow {cold_share:.1%}"
        )

    def _settled_node0(self, timeout_s: float = 60.0) -> tuple[int, int, int]:
        """Node 0's MemTotal and MemFree and the workload's VmRSS (KiB), once
        MemTotal holds still for 2 s: blocks the last resize removed count in
        MemTotal until the guest has offlined them (under TCG, seconds), and
        measured before that they read as memory beside the device (one run
        took 124 MiB for the usual 60 and squeezed node 0 to 72 MiB)."""
        cmd = (
            "sync; echo 3 > /proc/sys/vm/drop_caches; "
            "awk '/MemTotal|MemFree/{print $4}' "
            "/sys/devices/system/node/node0/meminfo; "
            f"awk '/VmRSS/{{print $2}}' /proc/{self.workload_pid}/status"
        )
        deadline = time.monotonic() + timeout_s
        last = -1
        while True:
            total_kib, free_kib, rss_kib = (int(x) for x in self.link.sh(cmd).split())
            if total_kib == last or time.monotonic() >= deadline:
                return total_kib, free_kib, rss_kib
            last = total_kib
            time.sleep(2.0)

    def squeeze_fast_bytes(self) -> tuple[int, dict[str, int]]:
        """The fast allotment for the squeeze, and the figures it came from.

        The guest agent's fast limit is node 0's memory beside the device (its
        ``MemTotal`` less the plugged size) plus the allotment; its room for the
        workload is that less node 0's use the workload does not explain
        (``agent_guest.policy.fast_budget``: the workload's pages on node 0,
        from its numa_maps, not its whole resident set, part of which an
        earlier unplug may have migrated to node 1). The allotment asked for
        leaves room for the workload's memory other than the cold set (the hot
        array and the interpreter) less ``squeeze_spare_mib``. The page cache
        is dropped first: what the guest frees after the measurement would be
        room for cold pages.
        """
        assert self.vm is not None
        total_kib, free_kib, rss_kib = self._settled_node0()
        maps = self.link.sh(f"cat /proc/{self.workload_pid}/numa_maps")
        on_node0 = numa_maps_bytes(maps.encode()).get(0, 0)
        fast = self.vm.allotments()[Tier.FAST]
        cold = self.cfg.cold_mib * MiB
        fig = {
            "node0_total_bytes": total_kib * 1024,
            "node0_used_bytes": (total_kib - free_kib) * 1024,
            "workload_rss_bytes": rss_kib * 1024,
            "workload_node0_bytes": on_node0,
            "plugged_bytes": fast.current_bytes,
        }
        fixed = fig["node0_total_bytes"] - fast.current_bytes
        unexplained = max(0, fig["node0_used_bytes"] - on_node0)
        room = fig["workload_rss_bytes"] - cold - self.cfg.squeeze_spare_mib * MiB
        need = unexplained + room - fixed
        if need <= 0:
            raise RuntimeError(
                f"node 0 holds {fixed // MiB} MiB beside the device: no allotment "
                f"leaves only {room // MiB} MiB of room for the workload (figures: "
                f"{fig}); make VmShape.fast_boot_mib smaller"
            )
        want = -(-need // fast.block_bytes) * fast.block_bytes
        fig |= {"fixed_bytes": fixed, "room_bytes": room, "requested_bytes": want}
        return want, fig

    def _demote_order(self, status: dict[str, Any]) -> None:
        """Did cold pages start moving to node 1 before the fast tier shrank?

        Times are seconds on the workload's clock (its history has about one entry
        per second); the squeeze started at ``started_at_s`` and the guest began
        to unplug (libvirt ``<current>`` first changed, polled every ~0.3 s)
        ``current_first_change_s`` later.
        """
        resize = self.report["squeeze_resize"]
        start = resize["started_at_s"]
        unplug = resize["current_first_change_s"]
        history = status.get("history", [])
        before = [h for h in history if h["t"] <= start]
        if unplug is None or not before:
            self.skip(
                "demote_before_shrink",
                "the squeeze gave no ordering data (unplug never started, or no "
                "workload history before the squeeze)",
            )
            return
        base = before[-1]["cold"].get("1", 0)
        step = max(1, status["cold_pages"] // 20)  # 5 % of the cold set
        moved = next(
            (
                h["t"]
                for h in history
                if h["t"] > start and h["cold"].get("1", 0) >= base + step
            ),
            None,
        )
        self.report["demote_before_shrink"] = {
            "squeeze_started_s": start,
            "unplug_started_s": round(start + unplug, 2),
            "cold_demotion_seen_s": moved,
            "demoted_first": moved is not None and moved < start + unplug,
            "host_agent_order": "Allot first; the unplug once the guest reports "
            "its fast node fits, or policy.shrink_notice_s after the Allot "
            "(agent_host.daemon.Daemon._shrink_due)",
        }
        self.say(
            f"[vm] squeeze: cold pages moving at t={moved} s, unplug started at "
            f"t={start + unplug:.2f} s (squeeze asked at t={start:.2f} s)"
        )

    def _wait_placement(self, deadline: float) -> dict[str, Any]:
        """Poll the workload until placed, or steady with the hot set placed."""
        status: dict[str, Any] = self.link.read_json(WORKLOAD_STATUS)
        last_counts: tuple[Any, Any] | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            status = self.link.read_json(WORKLOAD_STATUS)
            if _converged(status):
                break
            counts = (status["hot_nodes"], status["cold_nodes"])
            if counts != last_counts:
                last_counts, stable_since = counts, time.monotonic()
            if (
                _shares(status)[0] >= CONVERGED_SHARE
                and time.monotonic() - stable_since >= self.cfg.steady_s
            ):
                break
            time.sleep(1.0)
        return status

    # -- restarts ------------------------------------------------------------

    def _host_guest_view(self) -> dict[str, Any]:
        """The ``guest`` part of the host agent's status for the VM ({} if none)."""
        assert self.vm is not None
        cfg = str(self.vm.run_dir / "host.toml")
        done = self._host_cli("status", "-c", cfg, "--json")
        if done.returncode != 0:
            return {}
        view: dict[str, Any] = json.loads(done.stdout)["vms"][self.cfg.shape.name]
        return dict(view["guest"])

    def _guest_allots(self) -> int | None:
        """``allots_received`` of the running guest agent, None if it does not
        answer yet (:meth:`_guest_status`)."""
        status = self._guest_status()
        return None if status is None else int(status["allots_received"])

    def _guest_status(self) -> dict[str, Any] | None:
        """The running guest agent's ``status``, None if it does not answer yet.
        Asked over its control socket with the guest's bare python3:
        `hypertier-guest status` imports numpy, tens of seconds under TCG."""
        try:
            out = self.link.sh(
                "python3 -c 'import json,socket; s=socket.socket(socket.AF_UNIX); "
                's.settimeout(5); s.connect("/run/hypertier/guest.sock"); '
                's.sendall(b"{\\"method\\": \\"status\\"}\\n"); '
                "print(s.makefile().readline())'",
                timeout_s=30,
                check=False,
            )
        except GuestLinkError as exc:
            # A TCG guest starved of host CPU (RCU stalls on the console)
            # can miss one poll; the caller's deadline decides, not one poll.
            log.warning("guest did not answer a status poll: %s", exc)
            return None
        try:
            status = json.loads(out)["result"]
            int(status["allots_received"])
        except (ValueError, KeyError, TypeError):
            return None
        return dict(status)

    def _await_channel(self, since: float, allots_before: int) -> dict[str, Any]:
        """Poll until the host shows the guest connected with a report received
        after ``since`` and the agent has received more than ``allots_before``
        allotments; seconds from ``since`` (to the poll that saw it)."""
        deadline = since + self.cfg.restart_timeout_s
        report_s = allot_s = up_s = None
        host: dict[str, Any] = {}
        guest: dict[str, Any] = {}
        while time.monotonic() < deadline and (report_s is None or allot_s is None):
            asked = time.monotonic()
            host = self._host_guest_view()
            age = host.get("report_age_s")
            if (
                report_s is None
                and host.get("connected")
                and age is not None
                and asked - age > since
            ):
                report_s = round(asked - since, 1)
            status = self._guest_status()
            if status is not None:
                guest = status
                if up_s is None:
                    up_s = round(time.monotonic() - since, 1)
                if allot_s is None and status["allots_received"] > allots_before:
                    allot_s = round(time.monotonic() - since, 1)
            time.sleep(0.5)
        step: dict[str, Any] = {
            "report_accepted_s": report_s,
            "allot_received_s": allot_s,
            # The guest agent's control socket answered (its start-up time).
            "guest_agent_answering_s": up_s,
            "host_view": host,
            "allots_received": guest.get("allots_received"),
            # The agent's own view: epochs done and reports it sent, to tell a
            # slow guest (few epochs) from a host that refuses its reports.
            "guest_epochs": guest.get("epochs"),
            "guest_reports_sent": guest.get("reports_sent"),
            "guest_last_tick_ms": guest.get("last_tick_ms"),
        }
        if report_s is None or allot_s is None:
            assert self.vm is not None
            try:
                step["agent_log_tail"] = self.link.sh(
                    f"tail -n 30 {agents.GUEST_AGENT_LOG}", check=False
                )
            except GuestLinkError as exc:
                step["agent_log_tail"] = f"<guest did not answer: {exc}>"
            step["console_tail"] = log_tail(self.vm.console_log, 15)
        return step

    def restarts(self) -> None:
        """kill -9 the guest agent and start it again; then restart the host agent.

        Both times the channel must be back (the host accepts reports, the
        agent receives its allotment) within ``restart_timeout_s``.
        """
        assert self.vm is not None
        if self.host_agent is None or self.agent_pid is None:
            self.skip("restarts", "needs both agents running (see host_agent)")
            return
        out: dict[str, Any] = {}
        self.link.sh(f"kill -KILL {self.agent_pid}", check=False)
        self.link.wait(self.agent_pid, 30)
        t0 = time.monotonic()
        self.agent_pid = agents.spawn_guest_agent(self.link)
        out["guest_agent_kill9"] = self._await_channel(t0, 0)
        before = self._guest_allots() or 0
        self.host_agent.terminate()
        self.host_agent.wait(30)
        t0 = time.monotonic()
        self._launch_host_agent(self.vm.run_dir / "host.toml")
        out["host_agent_restart"] = self._await_channel(t0, before)
        self.report["restarts"] = out
        for name, step in out.items():
            self.say(
                f"[vm] {name}: reports accepted after {step['report_accepted_s']} s, "
                f"allotment received after {step['allot_received_s']} s "
                f"(guest agent answering after {step['guest_agent_answering_s']} s)"
            )

    def stop_agents(self) -> None:
        if self.agent_pid is not None:
            status = self.link.call(
                {
                    "op": "sh",
                    "cmd": f"hypertier-guest status --json -c {GUEST_CONFIG}",
                    "timeout_s": 30,
                },
                40,
            )
            text = status.get("out") or status.get("err") or ""
            self.report["guest_agent_status"] = text
            try:
                counters = json.loads(text)
                self.report["pages_moved"] = {
                    "promoted": counters.get("pages_promoted"),
                    "demoted": counters.get("pages_demoted"),
                }
                self.say(f"[vm] guest agent moved pages: {self.report['pages_moved']}")
            except ValueError:
                pass
            self.link.sh(f"kill -TERM {self.agent_pid}", check=False)
            self.report["guest_agent_rc"] = self.link.wait(self.agent_pid, 30)
        if self.host_agent is not None:
            rc = agents.stop_host_agent(self.host_agent, 30.0)
            self.report["host_agent_rc"] = "killed after 30 s" if rc is None else rc

    def _resize(self, tier: Tier, requested: int) -> str:
        assert self.vm is not None
        try:
            from agent_host.libvirt_backend import LibvirtHostBackend
        except ImportError as err:
            self.vm.resize_raw(tier, requested)
            return f"raw virDomainUpdateDeviceFlags (agent_host.libvirt_backend: {err})"
        backend = LibvirtHostBackend(uri="qemu:///system")
        try:
            backend.resize(self.cfg.shape.name, tier, requested)
        finally:
            backend.close()
        return "agent_host.libvirt_backend.LibvirtHostBackend.resize"

    def _await_resize(
        self,
        tier: Tier,
        node: str,
        old: int,
        new: int,
        before_kib: int,
        t0: float,
        poll_s: float,
    ) -> dict[str, Any]:
        """Wait until libvirt's <current> and the guest node's MemTotal show the
        resize of ``tier`` from ``old`` to ``new`` bytes asked at ``t0``."""
        assert self.vm is not None
        want_kib = before_kib + (new - old) // 1024
        host_s = guest_s = first_change_s = None
        after = before_kib
        deadline = t0 + self.cfg.resize_timeout_s
        while time.monotonic() < deadline and (host_s is None or guest_s is None):
            current = self.vm.allotments()[tier].current_bytes
            if first_change_s is None and current != old:
                first_change_s = round(time.monotonic() - t0, 3)
            if host_s is None and current == new:
                host_s = time.monotonic() - t0
            if guest_s is None:
                after = self.node_info()[node]["memtotal_kib"]
                if after == want_kib:
                    guest_s = time.monotonic() - t0
            time.sleep(poll_s)
        return {
            "from_bytes": old,
            "to_bytes": new,
            "host_current_s": None if host_s is None else round(host_s, 3),
            "guest_seen_s": None if guest_s is None else round(guest_s, 3),
            "node_memtotal_kib_before": before_kib,
            "node_memtotal_kib_after": after,
            "current_first_change_s": first_change_s,
        }

    def resizes(self) -> None:
        assert self.vm is not None
        results = []
        for tier_name, mib in self.cfg.resizes:
            tier = Tier(tier_name)
            node = str(self.vm.allotments()[tier].guest_node)
            before = self.node_info()[node]["memtotal_kib"]
            old = self.vm.allotments()[tier].requested_bytes
            new = mib * MiB
            t0 = time.monotonic()
            path = self._resize(tier, new)
            entry = {
                "tier": tier.value,
                "guest_node": int(node),
                **self._await_resize(tier, node, old, new, before, t0, 0.0),
                "path": path,
            }
            results.append(entry)
            self.say(
                f"[vm] resize {tier.value} {old // MiB}->{mib} MiB: "
                "host <current> after "
                f"{entry['host_current_s']} s, guest node{node} "
                f"{before // 1024}->{entry['node_memtotal_kib_after'] // 1024} MiB "
                f"after {entry['guest_seen_s']} s"
            )
        self.report["resizes"] = results
        if self.agent_pid is None:
            self.skip(
                "demote_before_shrink",
                "needs the guest agent running in the guest (see guest_agent)",
            )

    def convergence(self) -> None:
        if self.agent_pid is None:
            self.skip(
                "placement",
                "needs the guest agent running in the guest (see guest_agent)",
            )
            return
        deadline = time.monotonic() + self.cfg.convergence_timeout_s
        t0 = time.monotonic()
        status = self._wait_placement(deadline)
        took = time.monotonic() - t0
        since_agent = time.monotonic() - self.agent_started
        ok = _converged(status)
        hot_share, cold_share = _shares(status)
        self.report["placement"] = {
            "converged": ok,
            # From the guest agent's start (it runs through the resizes before).
            "time_s": round(since_agent, 1) if ok else None,
            "hot_converged_s": self._hot_converged_s(status),
            "waited_after_resizes_s": round(took, 1),
            "hot_share_on_fast": round(hot_share, 4),
            "cold_share_on_slow": round(cold_share, 4),
            "hot_nodes": status["hot_nodes"],
            "cold_nodes": status["cold_nodes"],
            "agent_log_tail": self.link.sh("tail -n 20 /tmp/agent.log", check=False),
        }
        self.say(
            f"[vm] placement {since_agent:.1f} s after agent start: hot on fast "
            f"{hot_share:.1%} (>= {CONVERGED_SHARE:.0%} after "
            f"{self.report['placement']['hot_converged_s']} s), cold on slow "
            f"{cold_share:.1%}: hot {status['hot_nodes']} cold {status['cold_nodes']}"
        )

    def _hot_converged_s(self, status: dict[str, Any]) -> float | None:
        """Seconds from guest agent start until >= 90 % of the hot set was on node 0.

        The workload's history is timed from its own start; the host saw the
        workload ready at ``workload_ready`` (host clock), close to that start.
        """
        offset = self.agent_started - self.workload_ready
        for entry in status.get("history", []):
            hot = entry["hot"]
            if hot.get("0", 0) >= CONVERGED_SHARE * status["hot_pages"]:
                return round(max(0.0, float(entry["t"]) - offset), 1)
        return None

    def stop_workload(self) -> None:
        if self.workload_pid is None:
            return
        self.link.sh(f"kill -TERM {self.workload_pid}", check=False)
        rc = self.link.wait(self.workload_pid, 180)
        status = self.link.read_json(WORKLOAD_STATUS)
        initial = self.report.get("workload_initial", {})
        self.report["workload"] = {
            "rc": rc,
            "done": status.get("done"),
            "iterations": status.get("iterations"),
            "errors": status.get("errors"),
            "final_bad_hot_pages": status.get("final_bad_hot_pages"),
            "final_bad_cold_pages": status.get("final_bad_cold_pages"),
            "hot_nodes": status.get("hot_nodes"),
            "cold_nodes": status.get("cold_nodes"),
            "pages_moved_observed": _moved(initial, status),
            "history": status.get("history", [])[-60:],
        }
        self.say(
            f"[vm] workload: rc={rc} iterations={status.get('iterations')} "
            f"checksum errors={status.get('errors')}"
        )

    def host_stats(self) -> None:
        assert self.vm is not None
        domstats = self.vm.domstats()
        query = self.vm.qemu_query_stats()
        kvm_present = any(k.startswith("kvm.") or k.startswith("vm.") for k in domstats)
        self.report["host_stats"] = {
            "domstats": domstats,
            "qemu_query_stats": query,
            "kvm_stats_available": bool(query.get("vm")) or kvm_present,
        }
        if not self.report["host_stats"]["kvm_stats_available"]:
            why = (
                f"accelerator is {self.report['accel']['name']}: "
                "QEMU query-stats returns "
                f"no KVM providers (vm: {json.dumps(query.get('vm'))[:120]}); "
                "per-VM KVM counters (exits, remote_tlb_flush) exist only under KVM"
            )
            self.skip("kvm_stats", why)

    def finish(self) -> dict[str, Any]:
        r = self.report
        r["total_s"] = round(time.monotonic() - self._start, 1)
        if self.vm is not None:
            r.setdefault("console_tail", log_tail(self.vm.console_log, 15))
            if not self.cfg.keep_vm:
                self.vm.destroy()
        out = report_dir()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"real-vm-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(r, indent=2, default=str) + "\n")
        (out / "real-vm-latest.json").write_text(path.read_text())
        r["report_path"] = str(path)
        self.say(f"[vm] total {r['total_s']} s; report: {path}")
        return r


def _defined(vm: TestVm, overlay: Path, payload: Path) -> bool:
    vm.define(overlay, payload)
    return True


def _shares(status: dict[str, Any]) -> tuple[float, float]:
    """Share of the hot set on node 0 (fast) and of the cold set on node 1 (slow)."""
    hot = status["hot_nodes"].get("0", 0) / status["hot_pages"]
    cold = status["cold_nodes"].get("1", 0) / status["cold_pages"]
    return hot, cold


def _converged(status: dict[str, Any]) -> bool:
    hot, cold = _shares(status)
    return hot >= CONVERGED_SHARE and cold >= CONVERGED_SHARE


def _moved(initial: dict[str, Any], final: dict[str, Any]) -> int | None:
    """Lower bound of pages moved: net change of the per-node counts."""
    if not initial or "hot_nodes" not in final:
        return None
    total = 0
    for key in ("hot_nodes", "cold_nodes"):
        before, after = initial[key], final[key]
        total += sum(max(0, after.get(n, 0) - before.get(n, 0)) for n in after)
    return total
