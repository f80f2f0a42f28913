"""Start and stop a real one-node Ray cluster on 127.0.0.1 (``ray start --head``) for tests and benchmarks.

The cluster runs in its own process group (``ray start --block`` in a new session), so
stopping it ends exactly the processes it started -- never another Ray on the machine
(``ray stop`` would end them all).

Token authentication is off for this short-lived test cluster (``RAY_AUTH_MODE=disabled``):
a driver that joins with an explicit address then needs no token, whatever order it imported
Ray in, and nothing is written to ``~/.ray``. Clusters of real use keep Ray's token
authentication (drivers set ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    """``ray start --head --num-cpus N`` on loopback; ``address`` is what ``--ray-address`` takes."""

    def __init__(self, num_cpus: int = 2, object_store_mb: int = 100) -> None:
        self.num_cpus, self.object_store_mb = num_cpus, object_store_mb
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's unix socket paths must stay < 108 chars
        self.proc: subprocess.Popen | None = None
        #: what a driver's environment gets while it uses the cluster
        self.env = {"RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> RayCluster:
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_cli),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={self.tmp}",
            "--block",
        ]
        env = {**os.environ, **self.env, "RAY_AUTH_MODE": "disabled"}
        self.log = open(self.tmp / "ray-start.log", "wb")  # noqa: SIM115 - open while the cluster runs
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.tmp / 'ray-start.log').read_text()[-3000:]}")
            if b"block forever" in (self.tmp / "ray-start.log").read_bytes():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ray start did not come up: {(self.tmp / 'ray-start.log').read_text()[-3000:]}")

    def pids(self, title_prefix: str = "") -> list[int]:
        """Live processes of this cluster (its process group and their descendants: Ray's workers run in
        sessions of their own) whose title starts with ``title_prefix`` (e.g. ``"ray::EnvWorker"``)."""
        if self.proc is None:
            return []
        procs: dict[int, tuple[int, int, str]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if fields[0] != "Z":
                procs[int(d.name)] = (int(fields[1]), int(fields[2]), title)  # ppid, pgid, title
        ours = {pid for pid, (_, pgid, _) in procs.items() if pgid == self.proc.pid}
        grew = True
        while grew:
            new = {pid for pid, (ppid, _, _) in procs.items() if ppid in ours and pid not in ours}
            ours |= new
            grew = bool(new)
        return sorted(pid for pid in ours if procs[pid][2].startswith(title_prefix))

    def stop(self) -> None:
        if self.proc is None:
            return
        workers = self.pids("ray::")  # own sessions: not reached by the group signal
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # Ray drains for up to 30 s: a test cluster needs no drain
            self.proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of this cluster's group
        self.proc.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)  # sessions, logs, sockets of this cluster
