"""The Ray engine on a real two-node cluster: the local engine's outputs, on both nodes, resumed after a kill.

The cluster is two `ray start` nodes of one CPU each on this machine (tests/support/ray_cluster.py),
started once for the module and stopped at its end, also when a test fails. Those tests are `slow`
(`make test-slow`); the check that the local engine never imports Ray runs by default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curation import dedup, filters, generate, pull
from machinery import store
from machinery.config import (
    DedupConfig,
    FilterConfig,
    HubSource,
    PullConfig,
    TeacherConfig,
    load_config,
)
from machinery.execution import LocalExecutor, RayExecutor
from tests.conftest import SHARED_DATA
from tests.support import traces
from tests.support.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
GSM8K, MATH500 = SHARED_DATA / "gsm8k", SHARED_DATA / "math500"


def test_the_local_engine_never_imports_ray(tmp_path):
    """`make run` needs no Ray: a local pull and dedup leave `ray` unimported."""
    script = ("import sys; from pathlib import Path; from curation import pull, dedup; "
              "from machinery.config import PullConfig, ProceduralSource, DedupConfig; "
              "run = Path(sys.argv[1]); pull.run(run, PullConfig(sources=[ProceduralSource(task='chain_sum', n=5)])); "
              "dedup.run(run, DedupConfig()); print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ds" / "v1")], check=False, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes with one CPU each; this process's Ray is shut down and both nodes stopped afterwards."""
    # Not imported yet: Ray reads its authentication settings from the environment once, on import.
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("DISTILLERY_REQUIRE_SLOW"):  # `make test` installed it: a skip would hide a failure
            pytest.fail("Ray is not installed: pip install 'distillery[ray]'")
        pytest.skip("Ray is not installed: pip install 'distillery[ray]'")
    if not (GSM8K / "train.jsonl").is_file():
        pytest.skip(f"real Hub-format data not found at {SHARED_DATA}")
    from tests.support.ray_cluster import RayCluster

    with RayCluster(nodes=2, cpus=1) as started:
        saved = {name: os.environ.get(name) for name in started.driver_env}
        os.environ.update(started.driver_env)  # this process drives it too (RayExecutor)
        try:
            yield started
        finally:
            import ray

            ray.shutdown()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _engines(cluster) -> dict:
    return {"local": LocalExecutor(), "ray": RayExecutor(cluster.address)}


def _stats(path: Path) -> dict:
    stats = json.loads(path.read_text())
    stats.pop("seconds")  # the one field a clock writes
    return stats


def _assert_same_stage(a: Path, b: Path, tables: tuple[str, ...] = (store.DATA, store.REJECTED)) -> None:
    """Byte-identical tables, equal stats (but the wall time), the same manifest key and table hashes."""
    for name in tables:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"
    assert _stats(a / store.STATS) == _stats(b / store.STATS)
    first, second = store.Manifest.read(a / store.MANIFEST), store.Manifest.read(b / store.MANIFEST)
    assert first.key == second.key and first.counts == second.counts
    assert {n: h for n, h in first.outputs.items() if n != store.STATS} == \
        {n: h for n, h in second.outputs.items() if n != store.STATS}


def _nodes_of(task_name: str) -> set[str]:
    """The nodes on which Ray ran finished tasks of this name (Ray's state API, through the dashboard)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("name", "=", task_name), ("state", "=", "FINISHED")], limit=10_000, detail=True,
                       raise_on_missing_output=False)
    return {t.node_id for t in tasks if t.node_id}


def _finished(task_name: str) -> int:
    from ray.util.state import list_tasks

    return len(list_tasks(filters=[("name", "=", task_name), ("state", "=", "FINISHED")], limit=10_000,
                          raise_on_missing_output=False))


def _eventually(read, expected, timeout_s: float = 30.0):
    """Ray's task events reach its state API about a second late: read until they say `expected`."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        value = read()
    return value


@pytest.mark.slow  # a two-node cluster and GSM8K: minutes on 2 cores (make test-slow)
def test_pull_and_dedup_of_gsm8k_train_on_ray_equal_the_local_run(cluster, tmp_path):
    pull_config = PullConfig(sources=[HubSource(id="openai/gsm8k", data_files=str(GSM8K / "train.jsonl"))])
    dedup_config = DedupConfig(eval_sets=[HubSource(id="openai/gsm8k", split="test",
                                                    data_files=str(GSM8K / "test.jsonl")),
                                          HubSource(id="HuggingFaceH4/MATH-500", split="test",
                                                    data_files=str(MATH500 / "test.jsonl"))])
    runs = {}
    for engine, executor in _engines(cluster).items():
        runs[engine] = run = tmp_path / engine / "gsm8k" / "v1"
        pull.run(run, pull_config, executor=executor, shard_rows=1000)
        dedup.run(run, dedup_config, executor=executor, shard_rows=1000)
    for stage in ("pull", "dedup"):
        _assert_same_stage(runs["local"] / stage, runs["ray"] / stage)
    stats = json.loads((runs["ray"] / "dedup" / store.STATS).read_text())
    assert stats["rows_in"] == 7473 and stats["reasons"]["contaminated"] >= 4 and stats["clusters"] > 7000
    record = json.loads((runs["ray"] / "dedup" / "execution.json").read_text())
    assert record["engine"] == "ray" and len(record["work"]["dedup.signatures"]["computed"]) == 8
    assert not (runs["ray"] / "dedup" / "shards").exists()  # gone once the manifest is written
    # the same index entry for the next version, whichever engine wrote it
    assert (tmp_path / "local" / "gsm8k" / "dedup-index" / "v1.parquet").read_bytes() == \
        (tmp_path / "ray" / "gsm8k" / "dedup-index" / "v1.parquet").read_bytes()
    for work in ("dedup.signatures", "dedup.partitions"):
        assert _eventually(lambda w=work: len(_nodes_of(w)), 2) == 2, f"{work} ran on one node"


@pytest.fixture(scope="module")
def traced_run(cluster, tmp_path_factory):
    """A run with real traces: MATH-500 and GSM8K test pulled and deduplicated, n=2 samples from a fake teacher
    answering with each problem's reference solution (spoiled for some)."""
    run = tmp_path_factory.mktemp("traced") / "math" / "v1"
    pull.run(run, PullConfig(sources=[HubSource(id="HuggingFaceH4/MATH-500", split="test",
                                                data_files=str(MATH500 / "test.jsonl")),
                                      HubSource(id="openai/gsm8k", split="test", data_files=str(GSM8K / "test.jsonl"),
                                                limit=700)]))
    dedup.run(run, DedupConfig())
    return run


def _copy(run: Path, where: Path) -> Path:
    target = where / run.parent.name / run.name
    shutil.copytree(run, target)
    return target


@pytest.mark.slow  # a two-node cluster and GSM8K: minutes on 2 cores (make test-slow)
def test_generate_and_filter_of_real_traces_on_ray_equal_the_local_run(cluster, traced_run, tmp_path):
    problems = store.finished(traced_run, "dedup").read()
    runs = {engine: _copy(traced_run, tmp_path / engine) for engine in ("local", "ray")}
    with FakeOpenAI(answer=traces.answer_from_prompt(problems)) as server:
        config = TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=2, concurrency=4)
        for engine, executor in _engines(cluster).items():
            generate.run(runs[engine], config, executor=executor, shard_rows=300)
    generated = {e: store.finished(r, "generate").read().drop("latency_s").sort("problem_id", "sample_idx")
                 for e, r in runs.items()}
    assert generated["ray"].height == 2 * problems.height and generated["ray"].equals(generated["local"])
    ray_stats = json.loads((runs["ray"] / "generate" / store.STATS).read_text())
    assert ray_stats["requests_sent"] == problems.height  # one request per problem (native n), none twice

    # Filter both on the very same generate output (its latency column is a clock's).
    runs["ray"] = _copy(runs["local"], tmp_path / "filter-ray")
    filters.run(runs["local"], FilterConfig(), executor=LocalExecutor(), shard_rows=500)
    filters.run(runs["ray"], FilterConfig(), executor=RayExecutor(cluster.address), shard_rows=500)
    _assert_same_stage(runs["local"] / "filter", runs["ray"] / "filter",
                       (store.DATA, store.REJECTED, "pass_rates.parquet"))
    reasons = json.loads((runs["ray"] / "filter" / store.STATS).read_text())["reasons"]
    assert {"wrong_answer", "bad_format", "repetitive", "near_duplicate_trace"} <= set(reasons)
    for work in ("generate.ask", "filter.checks"):
        assert _eventually(lambda w=work: len(_nodes_of(w)), 2) == 2, f"{work} ran on one node"


def _markers(run: Path) -> set[str]:
    return {p.name.removesuffix(".done.json") for p in (run / "filter" / "shards").glob("*/*.done.json")}


@pytest.mark.slow  # a two-node cluster and GSM8K: minutes on 2 cores (make test-slow)
def test_a_killed_ray_driver_redoes_only_the_shards_it_had_not_written(cluster, traced_run, tmp_path):
    problems = store.finished(traced_run, "dedup").read()
    base = _copy(traced_run, tmp_path / "base")
    with FakeOpenAI(answer=traces.answer_from_prompt(problems)) as server:
        generate.run(base, TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=2))
    traces_in = store.finished(base, "generate").read().height
    shard_rows = 150
    shards_total = -(-traces_in // shard_rows)
    killed, expected = _copy(base, tmp_path / "killed"), _copy(base, tmp_path / "expected")
    argv = [sys.executable, "-m", "flows.cli", "filter", "--run", str(killed), "--set", "execution.engine=ray",
            "--set", f"execution.address={cluster.address}", "--set", f"execution.shard_rows={shard_rows}"]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_markers(killed)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver.poll() is None, "the filter finished before it could be killed"
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its answer checkers, mid-stage
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    # Ray stops a dead driver's tasks; wait until none of them is running before counting what they wrote.
    from ray.util.state import list_tasks

    _eventually(lambda: len(list_tasks(filters=[("name", "=", filters.CHECKS), ("state", "=", "RUNNING")],
                                       raise_on_missing_output=False)), 0)
    written = _markers(killed)
    assert 2 <= len(written) < shards_total
    before = _finished(filters.CHECKS)

    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((killed / "filter" / "execution.json").read_text())["work"][filters.CHECKS]
    assert set(record["reused"]) == written and len(record["computed"]) == shards_total - len(written)
    # Ray ran exactly the missing shards: nothing written before was computed twice.
    assert _eventually(lambda: _finished(filters.CHECKS) - before, shards_total - len(written)) == \
        shards_total - len(written)
    # ... and the resumed output is the uninterrupted local one.
    filters.run(expected, load_config("cpu-smoke").filter, executor=LocalExecutor(), shard_rows=shard_rows)
    _assert_same_stage(expected / "filter", killed / "filter", (store.DATA, store.REJECTED, "pass_rates.parquet"))
    assert pl.read_parquet(killed / "filter" / store.DATA).height > 0
