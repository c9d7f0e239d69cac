"""The filter flow on a Ray instance that Prefect starts (prefect-ray): a task run per shard, the local output.

The flow runs in a child process: Ray keeps process-wide state (its authentication token, its
connection), which must not leak into the other tests of this session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curation import dedup, filters, generate, pull
from machinery import store
from machinery.config import (
    DedupConfig,
    HubSource,
    PullConfig,
    TeacherConfig,
    load_config,
)
from machinery.execution import LocalExecutor
from tests.support import traces
from tests.support.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]

FLOW = """
import json, sys
from pathlib import Path
from prefect.testing.utilities import prefect_test_harness
from machinery.config import load_config

run_dir, shard_rows = sys.argv[1], sys.argv[2]
with prefect_test_harness(server_startup_timeout=120):
    import ray
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from flows.pipeline import filter_flow

    config = load_config("cpu-smoke", sets=["execution.engine=ray", f"execution.shard_rows={shard_rows}"])
    result = filter_flow(run_dir=run_dir, config=config)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="filter.checks")))
    print(json.dumps({"skipped": result["skipped"], "ray_left_running": ray.is_initialized(),
                      "task_runs": sorted((r.name, r.state.type.value) for r in runs)}))
"""


@pytest.mark.slow
def test_filter_flow_on_ray_started_by_prefect_has_a_task_run_per_shard(tmp_path, shared_data):
    if importlib.util.find_spec("prefect_ray") is None:
        if os.environ.get("DISTILLERY_REQUIRE_SLOW"):
            pytest.fail("prefect-ray is not installed: pip install 'distillery[ray]'")
        pytest.skip("prefect-ray is not installed: pip install 'distillery[ray]'")
    run = tmp_path / "ray" / "math" / "v1"
    pull.run(run, PullConfig(sources=[HubSource(id="HuggingFaceH4/MATH-500", split="test", limit=60,
                                                data_files=str(shared_data / "math500" / "test.jsonl")),
                                      HubSource(id="openai/gsm8k", split="test", limit=140,
                                                data_files=str(shared_data / "gsm8k" / "test.jsonl"))]))
    dedup.run(run, DedupConfig())
    problems = store.finished(run, "dedup").read()
    with FakeOpenAI(answer=traces.answer_from_prompt(problems)) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=2))
    local = tmp_path / "local" / "math" / "v1"
    shutil.copytree(run, local)
    filters.run(local, load_config("cpu-smoke").filter, executor=LocalExecutor())

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FLOW, str(run), "100"], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    shards = -(-2 * problems.height // 100)
    assert figures["task_runs"] == sorted([f"filter.checks #{i}", "COMPLETED"] for i in range(shards))
    assert not figures["skipped"] and not figures["ray_left_running"]  # the runner stopped the Ray it started
    for name in (store.DATA, store.REJECTED, "pass_rates.parquet"):
        assert (run / "filter" / name).read_bytes() == (local / "filter" / name).read_bytes()
    assert json.loads((run / "filter" / "execution.json").read_text())["engine"] == "ray"
