"""A Ray instance that a stage starts for itself listens on 127.0.0.1 only: no other machine can reach it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The executor starts Ray as a stage does, runs work on it, and reports every TCP port that Ray's
# processes (this driver and everything it started) listen on.
START_AND_LIST = """
import json, os, psutil
from machinery.execution import RayExecutor
executor = RayExecutor(None)
ray = executor.connect()
results = sorted(index * 10 + value for index, value in executor.map(abs, [-1, -2, 3], name="probe"))
processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
listening = set()
for process in processes:
    try:
        listening |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        pass  # a worker that exited meanwhile
print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "listening": sorted(listening), "results": results}))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_ray_instance_started_by_a_stage_listens_on_loopback_only():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed: pip install 'distillery[ray]'")
    # No inherited RAY_* setting decides for it.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", START_AND_LIST], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["results"] == [1, 12, 23]  # the instance works
    assert report["node_ip"] == "127.0.0.1"
    assert report["listening"] and set(report["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, report
