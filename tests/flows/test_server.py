"""`distillery up` in the background: deployments served, a triggered run completes, the refresh schedule fires."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows import server
from tests.conftest import free_port

BIN = Path(sys.executable).parent
# A served Prefect server, a whole curate-and-train run of the tiny profile and a schedule: minutes (make test-slow).
pytestmark = pytest.mark.slow


def _api(url: str, path: str, payload: dict | None = None) -> object:
    """One call to the Prefect REST API (POST with a JSON body when given)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    """Poll `check` until it returns something truthy; fail with the server log on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"distillery up exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        found = check()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-3000:]}")


def test_up_serves_runs_schedules_and_stops_on_ctrl_c(tmp_path):
    """`prefect deployment run curate-and-train/tiny` completes; refresh/weekly has scheduled runs; Ctrl-C stops all."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PATH=f"{BIN}:{env.get('PATH', '')}")
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "distillery"), "up", "--port", str(port)], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def deployment_id():
            try:
                return _api(api_url, "/deployments/name/curate-and-train/tiny")["id"]
            except OSError:
                return None

        _wait("the deployments", deployment_id, 180, proc, log)
        triggered = subprocess.run([str(BIN / "prefect"), "deployment", "run", "curate-and-train/tiny"],
                                   env={**env, "PREFECT_API_URL": api_url}, capture_output=True, text=True,
                                   timeout=120, check=False)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout).group(1)

        def scheduled_refresh():
            runs = _api(api_url, "/flow_runs/filter", {
                "deployments": {"name": {"any_": ["weekly"]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
            return runs

        assert _wait("scheduled refresh runs", scheduled_refresh, 120, proc, log)

        def finished():
            state = _api(api_url, f"/flow_runs/{run_id}")["state"]["type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        assert _wait("the triggered run", finished, 600, proc, log) == "COMPLETED", log.read_text()[-3000:]
        assert (tmp_path / "runs" / "tiny" / "v1" / "eval" / "eval.json").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"distillery up did not stop within 60 s of Ctrl-C:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert not server.answers(api_url)  # the local server stopped with it
