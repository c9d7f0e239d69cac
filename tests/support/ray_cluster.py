"""A real Ray cluster of several nodes on this machine, for tests and benchmarks, stopped exactly.

Each node is `ray start --block` in a session of its own: the command stays in the
foreground, and stopping it stops the node's processes (GCS, raylet, dashboard, workers).
Every port is chosen here, outside Ray's default worker port range (10002-19999), so the
cluster never meets another Ray on the machine; `ray stop` is never called, because it stops
every Ray process of the machine. Whatever a node left behind is found by its temp dir, which
appears in its processes' command lines, and killed by pid.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

STARTED = "Ray runtime started"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (from the kernel's ephemeral range)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray() -> str:
    """The `ray` command of this Python environment."""
    return str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """`nodes` Ray nodes of `cpus` CPUs each on 127.0.0.1; use as a context manager."""

    def __init__(self, nodes: int = 2, cpus: int = 1, *, dashboard: bool = True, start_timeout_s: float = 90.0):
        self.nodes, self.cpus, self.dashboard, self.start_timeout_s = nodes, cpus, dashboard, start_timeout_s
        # Short: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's token authentication, with a token of this cluster's own: a driver needs `driver_env`.
        self.driver_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                           "RAY_USAGE_STATS_ENABLED": "0"}
        self.env = {**os.environ, **self.driver_env}
        self._procs: list[subprocess.Popen] = []

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_args(self, index: int) -> list[str]:
        base = 20_000 + (os.getpid() % 200) * 50 + index * 10_000 // max(self.nodes, 1)
        ports = ["--node-manager-port", free_port(), "--object-manager-port", free_port(),
                 "--metrics-export-port", free_port(), "--runtime-env-agent-port", free_port(),
                 "--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                 "--min-worker-port", base, "--max-worker-port", base + 40]
        return [str(p) for p in ports] + ["--num-cpus", str(self.cpus), "--temp-dir", str(self.temp_dir),
                                          "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]

    def _start(self, args: list[str], log: Path) -> None:
        with log.open("wb") as out:
            proc = subprocess.Popen([_ray(), "start", *args], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self._procs.append(proc)
        deadline = time.monotonic() + self.start_timeout_s
        while STARTED not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start {' '.join(args[:2])} did not start (exit {proc.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def __enter__(self) -> RayCluster:
        try:
            head = ["--head", "--port", str(self.port), "--ray-client-server-port", str(free_port()),
                    f"--include-dashboard={'true' if self.dashboard else 'false'}"]
            if self.dashboard:
                head += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
            self._start(head + self._node_args(0), self.temp_dir / "head.log")
            for index in range(1, self.nodes):
                self._start(["--address", self.address, *self._node_args(index)], self.temp_dir / f"node{index}.log")
            self._wait_for_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_nodes(self) -> None:
        """Until every node is alive in the GCS (a second node registers a moment after it says it started)."""
        deadline = time.monotonic() + self.start_timeout_s
        script = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                  "print(sum(n['Alive'] for n in ray.nodes()))")
        while True:
            done = subprocess.run([sys.executable, "-c", script, self.address], capture_output=True, text=True,
                                  env=self.env, timeout=120, check=False)
            if done.stdout.strip().splitlines()[-1:] == [str(self.nodes)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done.stdout.strip()!r} of {self.nodes} Ray nodes came up: "
                                   f"{done.stderr[-2000:]}")
            time.sleep(1)

    def tree(self) -> list[psutil.Process]:
        """The `ray start` commands and their descendants (every node process, cheaply: no full scan)."""
        found: list[psutil.Process] = []
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                found += [parent, *parent.children(recursive=True)]
        return found

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: the `ray start` commands, their children, and any that
        name its temp dir."""
        found: dict[int, psutil.Process] = {}
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                found[parent.pid] = parent
                found.update({child.pid: child for child in parent.children(recursive=True)})
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.temp_dir) in " ".join(proc.info["cmdline"] or []):
                    found[proc.pid] = proc
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """Stop exactly this cluster's processes: each node's `ray start --block`, then any left behind."""
        # SIGTERM to `ray start --block` alone: it stops its node's processes (2-3 s); sent to the whole
        # group as well, the head's command hung for over 30 s.
        for proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        left = self.processes()
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=10)
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.stop()
