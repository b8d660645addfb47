"""Test driver inside the HyperTier test VM (not part of the product).

Serves JSON lines on the virtio-serial port ``org.hypertier.test.0``:
  {"id": 1, "op": "ping"}                      -> {"id": 1, "uptime_s": 12.3}
  {"id": 2, "op": "sh", "cmd": "...", "timeout_s": 60}
        -> {"id": 2, "rc": 0, "out": "...", "err": "..."}
  {"id": 3, "op": "spawn", "cmd": "...", "log": "/tmp/x.log"}
                                               -> {"id": 3, "pid": 123}
  {"id": 4, "op": "wait", "pid": 123, "timeout_s": 10}
                                               -> {"id": 4, "rc": 0 | null}
Runs on the guest's Debian python3 only (standard library).
"""

import json
import os
import subprocess
import sys
import time

PORT_NAME = "org.hypertier.test.0"
CHILDREN: dict[int, subprocess.Popen] = {}


def find_port():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        base = "/sys/class/virtio-ports"
        for vport in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            try:
                with open(os.path.join(base, vport, "name")) as f:
                    if f.read().strip() == PORT_NAME:
                        return "/dev/" + vport
            except OSError:
                continue
        time.sleep(0.2)
    raise SystemExit("guestd: no virtio-serial port " + PORT_NAME)


def handle(req):
    op = req.get("op")
    if op == "ping":
        with open("/proc/uptime") as f:
            return {"uptime_s": float(f.read().split()[0])}
    if op == "sh":
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", req["cmd"]],
                capture_output=True,
                text=True,
                timeout=req.get("timeout_s", 120),
            )
        except subprocess.TimeoutExpired as err:
            return {"rc": None, "out": str(err.stdout or ""), "err": "timeout"}
        return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}
    if op == "spawn":
        with open(req.get("log", "/dev/null"), "ab") as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", req["cmd"]], stdout=log, stderr=subprocess.STDOUT
            )
        CHILDREN[proc.pid] = proc
        return {"pid": proc.pid}
    if op == "wait":
        proc = CHILDREN.get(req["pid"])
        if proc is None:
            return {"error": "unknown pid"}
        try:
            rc = proc.wait(timeout=req.get("timeout_s", 0))
        except subprocess.TimeoutExpired:
            return {"rc": None}
        CHILDREN.pop(req["pid"], None)
        return {"rc": rc}
    return {"error": "unknown op " + repr(op)}


def main():
    path = find_port()
    fd = os.open(path, os.O_RDWR)
    print("HT-GUESTD ready on", path, flush=True)
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            # Host side not connected: virtio-serial reads return EOF until it is.
            time.sleep(0.1)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
                resp = handle(req)
            except Exception as err:  # test driver: report, never die
                req = {}
                resp = {"error": repr(err)}
            resp["id"] = req.get("id") if isinstance(req, dict) else None
            data = (json.dumps(resp) + "\n").encode()
            while data:
                data = data[os.write(fd, data) :]


if __name__ == "__main__":
    sys.exit(main())
