"""Run ansible-playbook against a chroot and read its JSON result
(`ansible.posix.json` stdout callback)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ANSIBLE_DIR", "PlaybookRun", "run_playbook"]

ANSIBLE_DIR = Path(__file__).resolve().parents[3] / "ansible"


@dataclass(frozen=True)
class PlaybookRun:
    """One ansible-playbook run: exit code, per-host stats and task results."""

    returncode: int
    result: dict[str, Any]
    stderr: str

    def stats(self, host: str) -> dict[str, int]:
        return dict(self.result["stats"][host])

    def task(self, name: str, host: str) -> dict[str, Any]:
        """The result of the task called name (role prefix optional; the last one)."""
        found = [
            task["hosts"][host]
            for play in self.result["plays"]
            for task in play["tasks"]
            if task["task"]["name"].split(" : ", 1)[-1] == name
            and host in task["hosts"]
        ]
        if not found:
            raise KeyError(f"task {name!r} did not run on {host}")
        return dict(found[-1])

    def failure_messages(self) -> list[str]:
        return [
            str(res.get("msg", ""))
            for play in self.result["plays"]
            for task in play["tasks"]
            for res in task["hosts"].values()
            if res.get("failed")
        ]


def _controller_env() -> dict[str, str]:
    # The chroot connection runs modules with the controller's environment; pip
    # settings meant for this machine (PIP_FIND_LINKS, ...) must not reach the target.
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))
    }


def run_playbook(
    rootfs: Path,
    group: str,
    extra_vars: dict[str, Any],
    workdir: Path,
    *,
    check: bool = False,
) -> PlaybookRun:
    """Apply site.yml to rootfs, a member of group, over the chroot connection."""
    inventory = workdir / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                group: {
                    "hosts": {
                        str(rootfs): {
                            "ansible_connection": "community.general.chroot",
                            "ansible_python_interpreter": "/usr/bin/python3",
                        }
                    }
                },
            }
        )
    )
    varsfile = workdir / "vars.json"
    varsfile.write_text(json.dumps(extra_vars))
    env = {
        **_controller_env(),
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
    }
    cmd = [
        "ansible-playbook",
        "-i",
        str(inventory),
        "-e",
        f"@{varsfile}",
        str(ANSIBLE_DIR / "site.yml"),
    ]
    if check:
        cmd.append("--check")
    proc = subprocess.run(
        cmd, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, check=False
    )
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise AssertionError(
            f"ansible-playbook printed no JSON (rc {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ) from err
    return PlaybookRun(proc.returncode, result, proc.stderr)
