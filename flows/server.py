"""`distillery up` and `distillery serve`: a local Prefect server when none answers, and the deployments.

Prefect reads its settings from the environment when it is first imported, so the
defaults below are set before any Prefect import: offline (no telemetry) and a runner that
polls every second, so a triggered run starts within about two seconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
}
STARTUP_TIMEOUT_S = 90.0


def answers(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at `api_url` (…/api)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> None:
    """In the child (Linux): get SIGTERM when the parent dies, so a killed `up` leaves no orphan server."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def start_server(port: int) -> subprocess.Popen:
    """Start `prefect server start` on 127.0.0.1 (SQLite under PREFECT_HOME) and wait until it answers."""
    api_url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port), "--analytics-off"], env={**os.environ, **OFFLINE_ENV},
                               preexec_fn=_die_with_parent)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not answers(api_url):
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {process.returncode} before answering "
                               f"at {api_url} (is port {port} taken? try --port)")
        if time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the Prefect server did not answer at {api_url} within {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
    return process


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a child process: SIGINT (Prefect shuts down cleanly), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve() -> int:
    """Serve every deployment from this process until Ctrl-C; needs a Prefect API (PREFECT_API_URL)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    from prefect import serve as prefect_serve

    from flows import deployments

    deployments.create_concurrency_limits()
    prefect_serve(*deployments.runner_deployments())
    return 0


def up(port: int = 4200) -> int:
    """Serve the deployments against the configured Prefect API, starting a local server if none answers."""
    api_url = os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{port}/api"
    server = None
    if answers(api_url):
        print(f"using the Prefect server at {api_url}", flush=True)
    else:
        print(f"starting a local Prefect server at {api_url} (SQLite, telemetry off)...", flush=True)
        server = start_server(port)
    os.environ["PREFECT_API_URL"] = api_url
    # `kill` (SIGTERM) stops like Ctrl-C: serve first, then the server it talks to.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"Prefect UI: {api_url.removesuffix('/api')}\nin another terminal:\n"
          f"  export PREFECT_API_URL={api_url}\n  prefect deployment run curate-and-train/cpu-smoke --watch",
          flush=True)
    try:
        return serve()
    except KeyboardInterrupt:
        return 0
    finally:  # serve first, then the server it talks to
        if server is not None:
            print("stopping the local Prefect server", flush=True)
            stop(server)
