"""Run every peer on every workload, each cell on a freshly booted Debian 13 guest.

One cell: boot the HMAT-tiered VM, check its memory tiers, set the peer's kernel
switches, start the workload (``ht-workload``, JSON lines every second), start the
peer's daemon on the workload's pid, wait for the workload to finish, then read
/proc/vmstat deltas, the ``tlb:tlb_flush`` histogram by reason and the CPU time of
the mechanism, and destroy the VM. A cell that cannot run records exactly why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.vm import accel as accel_mod
from tests.integration.vm import agents, image, libvirtd, tlbtrace
from tests.integration.vm.guestlink import GuestLink, GuestLinkError
from tests.integration.vm.machine import log_tail

from . import build, programs
from .peers import PEERS, Peer, damo_command, memtierd_config
from .vm import PeersVm, peers_shape

log = logging.getLogger(__name__)

P = "/opt/hypertier"
WORKLOAD_OUT = "/tmp/workload.jsonl"
REDIS_SOCK = "/tmp/redis.sock"
VMSTAT_RE = re.compile(r"^(pgpromote|pgdemote|pgmigrate|numa_|thp_migration)")
# Expected on a 6.12 guest with node 1 slower in the HMAT: node 0 in the default
# tier (adistance 4 -> memory_tier4), node 1 one tier lower.
EXPECTED_TIERS = {"0": "memory_tier4"}
CPU_SNAPSHOT = (
    "python3 -c '"
    "import os, json\n"
    "out = {}\n"
    'for p in os.listdir("/proc"):\n'
    "    if not p.isdigit(): continue\n"
    "    try:\n"
    '        s = open("/proc/" + p + "/stat").read()\n'
    '        c = open("/proc/" + p + "/cmdline").read().replace(chr(0), " ")\n'
    "    except OSError: continue\n"
    '    comm = s[s.index("(") + 1:s.rindex(")")]\n'
    '    f = s[s.rindex(")") + 2:].split()\n'
    "    out[p] = [comm, int(f[11]), int(f[12]), int(f[1]), c[:200]]\n"
    "print(json.dumps(out))'"
)
CLK_TCK = 100
# Runs the workload as its child and appends the child's CPU time (getrusage
# RUSAGE_CHILDREN) as a last JSON line: NUMA-hint faults and their migrations
# are charged to the workload's system time, and it has exited before the
# runner's last snapshot.
RUSAGE_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'type': 'rusage', 'rc': rc, 'utime_s': u.ru_utime, "
    "'stime_s': u.ru_stime, 'minflt': u.ru_minflt, 'nvcsw': u.ru_nvcsw, "
    "'nivcsw': u.ru_nivcsw}), flush=True)\n"
    "sys.exit(rc)\n"
)


@dataclass(frozen=True)
class Workload:
    """A guest program run once per peer.

    ``kind`` ``synthetic``: ``args`` follow ``ht-workload``'s CLI and the program
    reports its hot set's share on node 0. ``kv``: redis-server (persistence off)
    under ``ht-kvload`` with ``args``; the runner reads the server's memory per
    node from /proc/PID/numa_maps every few seconds.
    """

    name: str
    args: str
    duration_s: float
    summary: str
    kind: str = "synthetic"


# Guest: node 0 = 384 MiB (about 290 MiB free after boot), node 1 = 640 MiB.
# Sizes as ht-workload's README suggests for a ~1 GiB guest.
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "slow-hot",
            "slow-hot --total-mib 512 --hot-mib 64 --order cold-first "
            "--cold-node default --hot-node 1",
            90.0,
            "64 MiB hot set first-touched on node 1 after 448 MiB of cold data "
            "filled node 0",
        ),
        Workload(
            "shift",
            "shift --total-mib 512 --hot-mib 64 --order hot-first "
            "--b-node 1 --cold-node default --shift-at-s 45",
            90.0,
            "64 MiB hot set A first-touched first (node 0); at 45 s the hot set "
            "becomes region B, first-touched on node 1",
        ),
        Workload(
            "scan",
            "scan --total-mib 512 --hot-mib 32 --order cold-first "
            "--cold-node default --hot-node 1 --scan-period-s 10",
            90.0,
            "32 MiB hot set on node 1, one sequential read of the 480 MiB cold "
            "data every 10 s",
        ),
        Workload(
            "large",
            "large --total-mib 448 --hot-mib 448 --order hot-first "
            "--hot-node default --cold-node default",
            90.0,
            "448 MiB hot set, more than node 0's 384 MiB, touched uniformly",
        ),
        Workload(
            "redis",
            "--keys 64000 --value-bytes 4096 --connections 4 --zipf 0.99 "
            "--get-ratio 0.9 --hot-keys last",
            90.0,
            "redis-server, 64,000 keys of 4 KiB (about 300 MiB) populated in "
            "order, the last-populated keys the popular ones (Zipf 0.99), 90 % GET",
            kind="kv",
        ),
    )
}
SHORT_WORKLOAD = "slow-hot"
SHORT_DURATION_S = 90.0


@dataclass
class RunConfig:
    out: Path
    peers: tuple[str, ...] = tuple(PEERS)
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    duration_s: float | None = None  # None: each workload's own
    boot_timeout_s: float = 300.0
    # Unique per process: the short version runs inside every full test run,
    # and two runs on one host must not destroy each other's VM or payload.
    vm_name: str = field(default_factory=lambda: f"ht-peers-{os.getpid()}")
    say: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


def missing_prerequisites() -> list[str]:
    """What this machine lacks for the peer benchmark (as for the end-to-end VM)."""
    from tests.integration.vm import scenario

    missing = scenario.missing_prerequisites()
    if not (build.MEMTIERD_SRC / "cmd/memtierd/main.go").is_file():
        missing.append(
            f"memtierd source at {build.MEMTIERD_SRC} "
            "(set HYPERTIER_MEMTIERD_SRC to an intel/memtierd checkout)"
        )
    if shutil.which("gcc") is None:
        missing.append("gcc (static guest programs): apt-get install gcc libc6-dev")
    return missing


class Runner:
    """Builds the artefacts once, then runs the cells one after the other."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.say = cfg.say
        self.report: dict[str, Any] = {"cells": {}, "artefacts": {}, "errors": {}}
        self._start = time.monotonic()

    # -- artefacts ---------------------------------------------------------------

    def prepare(self) -> tuple[image.BaseImage, accel_mod.Accel, Path] | None:
        r = self.report
        run_dir = image.cache_dir() / "runs" / self.cfg.vm_name
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            r["libvirtd"] = asdict(libvirtd.ensure_libvirtd())
            t0 = time.monotonic()
            base = build.build_guest_image()
            r["artefacts"]["image"] = _timed(base.key, base.built_s, t0)
            t0 = time.monotonic()
            builder = build.build_builder()
            r["artefacts"]["builder"] = _timed(builder.root.name, builder.built_s, t0)
            t0 = time.monotonic()
            memtierd = build.build_memtierd(builder)
            r["artefacts"]["memtierd"] = {
                "path": str(memtierd),
                "s": round(time.monotonic() - t0, 1),
            }
            damo = build.fetch_damo()
            r["artefacts"]["damo"] = damo.name
            t0 = time.monotonic()
            guest_files = programs.guest_files()
            r["artefacts"]["guest_programs_s"] = round(time.monotonic() - t0, 1)
            damo_dir = run_dir / "damo"
            with zipfile.ZipFile(damo) as zf:
                zf.extractall(damo_dir)
            extra = {
                "damo": damo_dir,
                "bin/memtierd": memtierd,
                **{f"bin/{name}": path for name, path in guest_files.items()},
            }
            payload = image.build_payload(run_dir, extra=extra, size="96M")
        except Exception as err:  # report: a failed build ends the run, said why
            r["errors"]["prepare"] = f"{err!r}\n{traceback.format_exc(limit=3)}"
            self.say(f"[peers] preparation failed: {err!r}")
            return None
        acc = accel_mod.choose(base.kernel)
        r["accel"] = asdict(acc)
        self.say(f"[peers] accelerator: {acc.name} ({acc.reason})")
        r["payload"] = str(payload)
        return base, acc, run_dir

    # -- the matrix ----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        prepared = self.prepare()
        if prepared is not None:
            base, acc, run_dir = prepared
            for wname in self.cfg.workloads:
                for pname in self.cfg.peers:
                    key = f"{pname}/{wname}"
                    t0 = time.monotonic()
                    cell = Cell(
                        self, PEERS[pname], WORKLOADS[wname], base, acc, run_dir
                    )
                    result = cell.run()
                    result["wall_s"] = round(time.monotonic() - t0, 1)
                    # The host's 1-minute load average as the cell ends: under
                    # TCG a loaded host slows the guest, and with it every
                    # daemon's reaction time (say so beside the figures).
                    result["host_load_1min"] = round(os.getloadavg()[0], 2)
                    self.report["cells"][key] = result
                    self.say(f"[peers] {key}: {_one_line(result)}")
                    self._write()
            # The per-process run directory (payload, overlays) goes; the report
            # keeps what the cells logged.
            shutil.rmtree(run_dir, ignore_errors=True)
        self.report["total_s"] = round(time.monotonic() - self._start, 1)
        self._write()
        return self.report

    def _write(self) -> None:
        out = self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(
            json.dumps(self.report, indent=2, default=str) + "\n"
        )


def _timed(name: str, built_s: float | None, t0: float) -> dict[str, Any]:
    return {
        "name": name,
        "cached": built_s is None,
        "s": round(time.monotonic() - t0, 1),
    }


def _one_line(cell: dict[str, Any]) -> str:
    if "error" in cell:
        return "error: " + str(cell["error"]).splitlines()[0][:200]
    m = cell.get("metrics", {})
    return (
        f"steady {m.get('steady_hot_node0')} "
        f"final {m.get('final_hot_node0')} migrated {m.get('pgmigrate_success')} "
        f"cpu {m.get('mechanism_cpu_s')} s ({cell['wall_s']} s)"
    )


class Cell:
    """One peer on one workload, on a fresh VM."""

    def __init__(
        self,
        runner: Runner,
        peer: Peer,
        workload: Workload,
        base: image.BaseImage,
        acc: accel_mod.Accel,
        run_dir: Path,
    ) -> None:
        self.runner = runner
        self.peer = peer
        self.workload = workload
        self.base = base
        self.acc = acc
        self.run_dir = run_dir
        self.vm: PeersVm | None = None
        self.result: dict[str, Any] = {
            "peer": peer.name,
            "workload": workload.name,
            "steps": {},
        }
        self.workload_pid: int | None = None
        self.daemon_pids: list[int] = []
        self.host_agent: subprocess.Popen[bytes] | None = None

    @property
    def link(self) -> GuestLink:
        assert self.vm is not None
        return self.vm.link

    @property
    def duration_s(self) -> float:
        return self.runner.cfg.duration_s or self.workload.duration_s

    def run(self) -> dict[str, Any]:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("boot", self.boot),
            ("tiers", self.check_tiers),
            ("switches", self.set_switches),
            ("before", self.snapshot_before),
            ("workload_start", self.start_workload),
            ("peer_start", self.start_peer),
            ("workload_wait", self.wait_workload),
            ("after", self.snapshot_after),
            ("peer_stop", self.stop_peer),
        ]
        try:
            for name, fn in steps:
                t0 = time.monotonic()
                try:
                    fn()
                except Exception as err:  # the cell records why it stopped
                    self.result["error"] = f"{name}: {err!r}"
                    self.result["traceback"] = traceback.format_exc(limit=4)
                    if self.vm is not None:
                        self.result["console_tail"] = log_tail(self.vm.console_log, 20)
                    break
                finally:
                    self.result["steps"][name] = round(time.monotonic() - t0, 1)
        finally:
            if self.vm is not None:
                self.result["guest_oops"] = self._guest_crashed()
            self.teardown()
        if "error" not in self.result:
            self.result["metrics"] = metrics(self.result)
        return self.result

    # -- steps -------------------------------------------------------------------

    def boot(self) -> None:
        vm_run = self.run_dir / "cell"
        vm_run.mkdir(parents=True, exist_ok=True)
        overlay = image.make_overlay(self.base, vm_run)
        self.vm = PeersVm(
            self.base, self.acc, vm_run, peers_shape(self.runner.cfg.vm_name)
        )
        self.vm.define(overlay, Path(self.runner.report["payload"]))
        self.result["boot"] = self.vm.start(self.runner.cfg.boot_timeout_s)
        self._await_allotments()

    def _await_allotments(self) -> None:
        assert self.vm is not None
        deadline = time.monotonic() + 120
        allot = self.vm.allotments()
        while any(a.current_bytes != a.requested_bytes for a in allot.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "virtio-mem did not plug the requested sizes within 120 s: "
                    + str({t.value: asdict(a) for t, a in allot.items()})
                )
            time.sleep(0.5)
            allot = self.vm.allotments()

    def check_tiers(self) -> None:
        out = self.link.sh(
            "uname -r; for t in /sys/devices/virtual/memory_tiering/memory_tier*; do "
            'echo "${t##*/} $(cat $t/nodelist)"; done; '
            "for n in /sys/devices/system/node/node[0-9]*; do "
            "echo \"${n##*/} $(grep MemTotal $n/meminfo | awk '{print $4}') "
            "$(grep MemFree $n/meminfo | awk '{print $4}')\"; done",
            check=False,
        )
        lines = out.splitlines()
        tiers = {
            ln.split()[0]: ln.split()[1] if len(ln.split()) > 1 else ""
            for ln in lines[1:]
            if ln.startswith("memory_tier")
        }
        nodes = {
            ln.split()[0][4:]: {
                "memtotal_kib": int(ln.split()[1]),
                "memfree_kib": int(ln.split()[2]),
            }
            for ln in lines[1:]
            if ln.startswith("node") and len(ln.split()) == 3
        }
        tier_of = {
            node: name for name, nodelist in tiers.items() for node in _nodes(nodelist)
        }
        expected = (
            tier_of.get("0") == EXPECTED_TIERS["0"]
            and "1" in tier_of
            and _tier_rank(tier_of["1"]) > _tier_rank(tier_of["0"])
        )
        self.result["tiers"] = {
            "kernel": lines[0] if lines else "",
            "memory_tiers": tiers,
            "nodes": nodes,
            "as_expected": expected,
        }
        if not expected:
            self.runner.say(
                f"[peers] memory tiers not as expected (node 0 in "
                f"{EXPECTED_TIERS['0']}, node 1 in a lower tier): {tiers}"
            )

    def set_switches(self) -> None:
        self.link.sh(self.peer.sysctl_commands())
        self.result["switches"] = self.link.sh(
            "cat /proc/sys/kernel/numa_balancing /sys/kernel/mm/numa/demotion_enabled"
        ).split()

    def snapshot_before(self) -> None:
        self.result["vmstat_before"] = self._vmstat()
        self.result["cpu_before"] = self._cpu()
        tlbtrace.start(self.link)

    def start_workload(self) -> None:
        program = f"{P}/bin/ht-workload"
        if self.workload.kind == "kv":
            self._start_redis()
            program = f"{P}/bin/ht-kvload --unix {REDIS_SOCK}"
        cmd = (
            f"exec python3 -c {shlex.quote(RUSAGE_WRAPPER)} "
            f"{program} {self.workload.args} "
            f"--duration-s {self.duration_s:.0f}"
        )
        self.result["workload_cmd"] = cmd
        self.workload_pid = self.link.spawn(cmd, WORKLOAD_OUT)
        # ht-kvload prints its start line once it has populated the server.
        deadline = time.monotonic() + (600 if self.workload.kind == "kv" else 180)
        while True:
            first = self.link.sh(f"head -n 1 {WORKLOAD_OUT}", check=False).strip()
            if first:
                start = json.loads(first)
                break
            rc = self.link.wait(self.workload_pid, 0)
            if rc is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"workload did not start (rc={rc}): "
                    + self.link.sh(f"tail -n 5 {WORKLOAD_OUT}", check=False)
                )
            time.sleep(0.5)
        self.result["workload_start"] = start
        if self.workload.kind == "kv":
            # The mechanisms manage the server's memory, not the load generator's.
            self.result["workload_start"]["pid"] = self.result["redis_pid"]

    def _start_redis(self) -> None:
        # A Unix socket: the test guest brings up no network interface, not even lo.
        self.link.spawn(
            f"exec redis-server --save '' --appendonly no --port 0 "
            f"--unixsocket {REDIS_SOCK} --unixsocketperm 700",
            "/tmp/redis.log",
        )
        deadline = time.monotonic() + 60
        ping = f"redis-cli -s {REDIS_SOCK} ping 2>&1"
        while "PONG" not in self.link.sh(ping, check=False):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "redis-server did not answer within 60 s: "
                    + self.link.sh("tail -n 10 /tmp/redis.log", check=False)
                )
            time.sleep(0.5)
        self.result["redis_pid"] = int(self.link.sh("pidof redis-server").split()[0])

    def start_peer(self) -> None:
        # The workload's own pid (its start line), not its rusage wrapper's.
        pid = int(self.result["workload_start"]["pid"])
        name = self.peer.name
        if name == "damon":
            out = self.link.sh(damo_command() + " 2>&1", timeout_s=120, check=False)
            self.result["peer_log"] = out[-2000:]
            status = self.link.sh(
                "cat /sys/kernel/mm/damon/admin/kdamonds/*/state", check=False
            )
            if "on" not in status.split():
                raise RuntimeError(f"damo start left no kdamond running: {out[-500:]}")
        elif name == "memtierd":
            self.link.sh(
                f"cat > /tmp/memtierd.yaml <<'EOF'\n{memtierd_config(pid)}EOF\n"
            )
            self.daemon_pids.append(
                self.link.spawn(
                    f"exec {P}/bin/memtierd -config /tmp/memtierd.yaml",
                    "/tmp/memtierd.log",
                )
            )
        elif name == "hypertier":
            agents.write_guest_config(self.link, pid)
            self.daemon_pids.append(agents.spawn_guest_agent(self.link))
            self._start_host_agent()
        time.sleep(1.0)
        for dpid in self.daemon_pids:
            rc = self.link.wait(dpid, 0)
            if rc is not None:
                log_file = (
                    "/tmp/memtierd.log" if name == "memtierd" else "/tmp/agent.log"
                )
                raise RuntimeError(
                    f"{name} exited rc={rc} at start: "
                    + self.link.sh(f"tail -n 15 {log_file}", check=False)
                )
        self.result["daemon_pids"] = list(self.daemon_pids)
        self.result["peer_started_unix_s"] = float(
            self.link.sh("date +%s.%N", check=False).strip() or 0
        )

    def _start_host_agent(self) -> None:
        assert self.vm is not None
        cfg = agents.write_host_config(self.vm.run_dir)
        log_path = self.vm.run_dir / "host-agent.log"
        with log_path.open("wb") as out:  # the cell's own log: a fresh file
            self.host_agent = agents.spawn_host_agent(cfg, out)
        self.result["host_agent_log"] = str(log_path)

    def wait_workload(self) -> None:
        assert self.workload_pid is not None
        deadline = time.monotonic() + self.duration_s + 240
        rc: int | None = None
        numa: list[dict[str, Any]] = []
        self.result["numa_maps"] = numa
        missed = 0
        while rc is None and time.monotonic() < deadline:
            try:
                if self.workload.kind == "kv":
                    numa.append(self._numa_maps(self.result["redis_pid"]))
                    rc = self.link.wait(self.workload_pid, 5)
                else:
                    rc = self.link.wait(self.workload_pid, 20)
            except GuestLinkError as err:
                # A guest busy with the workload and a mechanism under TCG can
                # answer late; a crashed one never does (the console says why).
                missed += 1
                if missed >= 4 or self._guest_crashed():
                    raise GuestLinkError(
                        f"guest stopped answering ({err}); console: "
                        + log_tail(self.vm.console_log if self.vm else Path("-"), 8)
                    ) from err
        if rc is None:
            raise RuntimeError(
                f"workload still running {self.duration_s + 240:.0f} s after start"
            )
        self.result["workload_rc"] = rc
        lines = self.link.sh(f"cat {WORKLOAD_OUT}", timeout_s=60)
        samples: list[dict[str, Any]] = []
        for line in lines.splitlines():
            try:
                samples.append(json.loads(line))
            except ValueError:
                continue
        self.result["samples"] = [
            s for s in samples if s.get("type") in ("sample", "end")
        ]
        usage = [s for s in samples if s.get("type") == "rusage"]
        if usage:
            self.result["workload_rusage"] = usage[-1]
        if rc != 0:
            raise RuntimeError(f"workload exited rc={rc}: {lines[-500:]}")

    def snapshot_after(self) -> None:
        self.result["vmstat_after"] = self._vmstat()
        self.result["cpu_after"] = self._cpu()
        self.result["tlb_flush"] = tlbtrace.read(self.link)

    def stop_peer(self) -> None:
        name = self.peer.name
        if name == "damon":
            self.result["damon_stat"] = self.link.sh(
                "for k in /sys/kernel/mm/damon/admin/kdamonds/*; do "
                "echo update_schemes_stats > $k/state; "
                "for s in $k/contexts/0/schemes/*; do "
                'echo "$(cat $s/action) $(cat $s/stats/nr_tried) '
                '$(cat $s/stats/sz_applied) $(cat $s/stats/qt_exceeds)"; '
                "done; done",
                check=False,
            )
            self.link.sh(DAMO_STOP, check=False, timeout_s=60)
        if name == "hypertier":
            self.result["agent_status"] = self._agent_status()
        # The daemons are left running: the VM is destroyed next. A daemon that
        # exits closes its perf events, which patches the running kernel's text
        # (static keys); under QEMU TCG with two vCPUs that can oops the guest.
        for path in ("/tmp/memtierd.log", "/tmp/agent.log"):
            tail = self.link.sh(f"tail -n 300 {path} 2>/dev/null", check=False)
            if tail.strip():
                self.result.setdefault("peer_logs", {})[path] = tail

    def teardown(self) -> None:
        if self.host_agent is not None:
            agents.stop_host_agent(self.host_agent, 30.0)
            self.host_agent = None
            log_path = Path(self.result["host_agent_log"])
            self.result["host_agent_log_tail"] = [
                ln
                for ln in log_tail(log_path, 400).splitlines()
                if "0 resize(s)" not in ln
            ][-80:]
        if self.vm is not None:
            self.vm.destroy()

    def _agent_status(self) -> dict[str, Any] | None:
        """The guest agent's counters over its control socket, with the guest's
        bare python3 (``hypertier-guest status`` imports numpy: slow under TCG)."""
        out = self.link.sh(
            "python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); "
            's.settimeout(20); s.connect("/run/hypertier/guest.sock"); '
            's.sendall(b"{\\"method\\": \\"status\\"}\\n"); '
            "print(s.makefile().readline())'",
            timeout_s=40,
            check=False,
        )
        try:
            status: dict[str, Any] = json.loads(out)["result"]
        except (ValueError, KeyError, TypeError):
            return None
        return status

    def _guest_crashed(self) -> bool:
        assert self.vm is not None
        text = log_tail(self.vm.console_log, 200)
        return "Kernel panic" in text or "Oops:" in text

    # -- collectors ---------------------------------------------------------------

    def _numa_maps(self, pid: int) -> dict[str, Any]:
        """Pages of ``pid`` per node (/proc/PID/numa_maps ``N<node>=<pages>``)."""
        out = self.link.sh(
            f"date +%s.%N; cat /proc/{pid}/numa_maps 2>/dev/null", check=False
        )
        lines = out.splitlines()
        pages: dict[str, int] = {}
        for m in re.finditer(r"\bN(\d+)=(\d+)", "\n".join(lines[1:])):
            pages[m.group(1)] = pages.get(m.group(1), 0) + int(m.group(2))
        return {"unix_s": float(lines[0]) if lines else 0.0, "pages": pages}

    def _vmstat(self) -> dict[str, int]:
        out = self.link.sh("cat /proc/vmstat")
        return {
            k: int(v)
            for k, v in (ln.split() for ln in out.splitlines() if len(ln.split()) == 2)
            if VMSTAT_RE.match(k)
        }

    def _cpu(self) -> dict[str, list[Any]]:
        return dict(json.loads(self.link.sh(CPU_SNAPSHOT, timeout_s=60)))


DAMO_STOP = f"PYTHONPATH={P}/damo python3 -m damo.damo stop"


def _nodes(nodelist: str) -> list[str]:
    out: list[str] = []
    for part in nodelist.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += [str(n) for n in range(int(lo), int(hi) + 1)]
        elif part.strip():
            out.append(part.strip())
    return out


def _tier_rank(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def mechanism_cpu_s(
    before: dict[str, list[Any]],
    after: dict[str, list[Any]],
    daemon_pids: list[int] | None = None,
) -> dict[str, float]:
    """CPU seconds (user + system) spent between the snapshots, by what spent it.

    ``mechanism``: the peer's daemon and its children (memtierd, the guest agent),
    ``kdamond.*`` threads, ``kswapd*`` (demotion by reclaim), ``kmigrated``;
    the workload's own CPU (where NUMA-hint faults and their migrations are
    charged) comes from its rusage line instead.
    """
    out = {"mechanism": 0.0, "kdamond": 0.0, "kswapd": 0.0, "daemon": 0.0}
    children: dict[str, list[str]] = {}
    for pid, row in after.items():
        children.setdefault(str(row[3]), []).append(pid)
    daemons: set[str] = set()
    stack = [str(p) for p in daemon_pids or []]
    while stack:
        pid = stack.pop()
        if pid in daemons:
            continue
        daemons.add(pid)
        stack += children.get(pid, [])
    for pid, row in after.items():
        comm = str(row[0])
        ticks = int(row[1]) + int(row[2])
        prev = before.get(pid)
        if prev is not None and prev[0] == comm:
            ticks -= int(prev[1]) + int(prev[2])
        secs = ticks / CLK_TCK
        if comm.startswith("kdamond"):
            out["kdamond"] += secs
        elif comm.startswith("kswapd"):
            out["kswapd"] += secs
        elif pid in daemons:
            out["daemon"] += secs
    out["mechanism"] = out["kdamond"] + out["kswapd"] + out["daemon"]
    return {k: round(v, 2) for k, v in out.items()}


def metrics(cell: dict[str, Any]) -> dict[str, Any]:
    """The cell's figures from its raw samples and snapshots."""
    samples = [s for s in cell.get("samples", []) if "hot_node0_frac" in s]
    series = [(float(s["t_s"]), float(s["hot_node0_frac"])) for s in samples]
    if not samples and cell.get("numa_maps"):
        # The real program: the share of the server's memory on node 0, against
        # the time since the load generator started its load phase.
        t0 = float((cell.get("workload_start") or {}).get("unix_s", 0.0))
        series = [
            (round(n["unix_s"] - t0, 1), n["pages"].get("0", 0) / total)
            for n in cell["numa_maps"]
            if (total := sum(n["pages"].values())) > 0 and n["unix_s"] >= t0
        ]
        samples = [s for s in cell.get("samples", []) if s.get("type") == "sample"]
        lat = [float(s["lat_p99_us"]) for s in samples if "lat_p99_us" in s]
        m_lat = round(sorted(lat)[len(lat) // 2]) if lat else None
    else:
        m_lat = None
    m: dict[str, Any] = {"series": series, "lat_p99_us_median": m_lat}
    if series:
        tail = [f for t, f in series if t >= series[-1][0] * 0.8]
        m["steady_hot_node0"] = round(sum(tail) / len(tail), 4)
        m["final_hot_node0"] = round(series[-1][1], 4)
        m["initial_hot_node0"] = round(series[0][1], 4)
        ops = [float(s.get("ops_per_s", 0)) for s in samples]
        m["ops_per_s_mean"] = round(sum(ops) / len(ops), 1) if ops else None
    before, after = cell.get("vmstat_before", {}), cell.get("vmstat_after", {})
    delta = {k: after[k] - before.get(k, 0) for k in after}
    m["vmstat_delta"] = {k: v for k, v in delta.items() if v}
    m["pgpromote_success"] = delta.get("pgpromote_success", 0)
    m["pgdemote"] = sum(v for k, v in delta.items() if k.startswith("pgdemote_"))
    m["pgmigrate_success"] = delta.get("pgmigrate_success", 0)
    m["numa_hint_faults"] = delta.get("numa_hint_faults", 0)
    cpu = mechanism_cpu_s(
        cell.get("cpu_before", {}),
        cell.get("cpu_after", {}),
        cell.get("daemon_pids"),
    )
    usage = cell.get("workload_rusage")
    if usage:
        cpu["workload_sys"] = round(float(usage["stime_s"]), 2)
        cpu["workload_user"] = round(float(usage["utime_s"]), 2)
    m["cpu"] = cpu
    m["mechanism_cpu_s"] = cpu["mechanism"]
    m["tlb_flush"] = cell.get("tlb_flush", {})
    m["tlb_flush_total"] = sum(m["tlb_flush"].values())
    return m


def report_root() -> Path:
    """$HYPERTIER_REPORT_DIR, else $HYPERTIER_CACHE/reports."""
    return Path(os.environ.get("HYPERTIER_REPORT_DIR") or image.cache_dir() / "reports")


def default_out() -> Path:
    return report_root() / ("peers-" + time.strftime("%Y%m%dT%H%M%S"))
