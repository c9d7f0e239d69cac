"""The staged hand-off for real: curation in the parent flow run, sft/grpo/eval as flow runs on a work pool.

A Prefect server, a process work pool standing in for the TPU pool, the training flows
deployed to it with `distillery deploy-training` (as docs/production.md says), a worker
polling it: `curate-and-train` with `orchestration.training_deployment` runs curation here
and hands each training stage to its deployment, in order. Slow: each child run is a fresh
process that imports JAX and Tunix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import server, stages
from machinery.config import load_config
from tests.conftest import free_port, prefect_api_at
from tests.flows.test_pipeline import _solver
from tests.support.fake_openai import FakeOpenAI

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "tpu-stand-in"


def _env(prefect_home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(server.OFFLINE_ENV, PREFECT_HOME=str(prefect_home), PREFECT_API_URL=api_url,
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def tpu_pool(tmp_path_factory):
    """A Prefect server, a process pool with sft/grpo/eval deployed as <stage>/tpu, and a worker on it."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _env(home, api_url)
    started = []
    try:
        started.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                         "--port", str(port), "--analytics-off"], env=env, cwd=home,
                                        stdout=(home / "server.log").open("w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while not server.answers(api_url):
            assert started[0].poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Prefect server did not answer within 120 s"
            time.sleep(0.5)
        for command in ([str(BIN / "prefect"), "work-pool", "create", "--type", "process", POOL],
                        [str(BIN / "distillery"), "deploy-training", "--pool", POOL]):
            done = subprocess.run(command, env=env, cwd=home, capture_output=True, text=True, timeout=180, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.split() == [f"{stage}/tpu" for stage in stages.TRAINING]
        started.append(subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL], env=env, cwd=home,
                                        stdout=(home / "worker.log").open("w"), stderr=subprocess.STDOUT))
        yield api_url, home
    finally:
        for process in reversed(started):  # the worker first, then the server it talks to
            server.stop(process, timeout=30)


def _flow_runs(api_url: str) -> list:
    """Every flow run the server knows, oldest first, with its flow's name."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        flows = {f.id: f.name for f in client.read_flows()}
    return sorted(((flows[r.flow_id], r) for r in runs), key=lambda pair: pair[1].start_time or pair[1].created)


def test_training_stages_run_as_flow_runs_on_the_pool_in_order(tpu_pool, tmp_path):
    from flows import pipeline
    from training import evaluate

    api_url, home = tpu_pool
    run_dir = tmp_path / "runs" / "tiny" / "v1"
    tiny = load_config("tiny")
    with FakeOpenAI(answer=_solver(tiny)) as teacher:
        config = load_config("tiny", sets=["teacher.backend=openai", f"teacher.base_url={teacher.base_url}",
                                           "teacher.model=fake", "teacher.style=chat", "teacher.api_key_env=null",
                                           "build.drop_zero_advantage=false", "filter.min_tokens=1",
                                           "orchestration.training_deployment=tpu"])
        with prefect_api_at(api_url):
            results = pipeline.curate_and_train(run_dir=str(run_dir), config=config, return_state=True)
    worker_log = (home / "worker.log").read_text()[-4000:]
    assert results.is_completed(), worker_log
    results = results.result()
    assert [r["stage"] for r in results] == list(stages.STAGES)
    assert all("deployment" not in r for r in results[:6])  # curation ran here, in the parent
    assert [r["deployment"] for r in results[6:]] == ["sft/tpu", "grpo/tpu", "eval/tpu"]
    runs = _flow_runs(api_url)
    children = [(flow, run) for flow, run in runs if flow in stages.TRAINING]
    assert [flow for flow, _ in children] == list(stages.TRAINING), worker_log  # one each, in order
    parent = next(run for flow, run in runs if flow == "curate-and-train")
    assert parent.state.is_completed()
    for (_, run), result in zip(children, results[6:]):
        assert run.state.is_completed() and str(run.id) == result["flow_run"]
        assert run.parent_task_run_id is not None  # a child of the parent's run_deployment
    assert children[0][1].start_time >= max(r.end_time for flow, r in runs if flow == "cards")
    assert evaluate.read(run_dir) is not None and (run_dir / "grpo" / "model" / "README.md").is_file()
    assert "| base |" in evaluate.markdown(run_dir)

    # A training run that fails fails the parent, naming the child and its state. The same folder: curation
    # and sft are complete and skipped; grpo now needs vllm, which no worker here has.
    failing = config.model_copy(update={"grpo": config.grpo.model_copy(update={"rollout_engine": "vllm"})})
    with prefect_api_at(api_url):
        state = pipeline.curate_and_train(run_dir=str(run_dir), config=failing, return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match=r"grpo/tpu: flow run \S+ ended Failed"):
        state.result()
