"""Whole-flow chaos: SIGKILL the pipeline at random points, re-run until it completes, compare with one clean run.

The same run, killed and resumed, must end with the same data (byte-equal where a stage is
deterministic, the same rows where timings differ), no teacher sample asked for again after
it was recorded, no temp files, and a valid manifest for every stage.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows import stages
from machinery import store
from machinery.config import load_config
from tests.conftest import free_port
from tests.flows.test_pipeline import _solver
from tests.flows.test_server import BIN, _api
from tests.support.fake_openai import FakeOpenAI
from training import lora

pytestmark = pytest.mark.slow
KILLS = 3
# Stages whose files depend only on their inputs and config: byte-equal after any number of kills.
DETERMINISTIC = ("pull", "dedup")
# Columns that record how a row was made (timings, cache hits), not what it is.
VOLATILE = {"latency_s", "cached", "attempts"}


def _sets(base_url: str) -> list[str]:
    """The tiny profile with a fake teacher that solves every problem, so every training stage has rows."""
    return ["teacher.backend=openai", f"teacher.base_url={base_url}", "teacher.model=fake", "teacher.style=chat",
            "teacher.concurrency=2", "build.drop_zero_advantage=false", "filter.min_tokens=1", "sft.steps=6",
            "grpo.steps=2", "grpo.checkpoint_every=1"]


def _run_cli(run_dir: Path, sets: list[str]) -> subprocess.Popen:
    """`distillery run --profile tiny` in its own process group (it starts a temporary Prefect server)."""
    argv = [sys.executable, "-m", "flows.cli", "run", "--profile", "tiny", "--run", str(run_dir)]
    argv += [arg for s in sets for arg in ("--set", s)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _rows(frame: pl.DataFrame) -> pl.DataFrame:
    """A table without its volatile columns, in a fixed row order."""
    frame = frame.drop([c for c in frame.columns if c in VOLATILE])
    return frame.sort(frame.columns)


def _compare(chaos: Path, clean: Path) -> None:
    """The killed-and-resumed run holds the same outputs as the clean one, every manifest valid, no temp files."""
    for stage in stages.STAGES:
        assert store.complete_manifest(chaos / stage) is not None, f"{stage}: no valid manifest"
    for stage in DETERMINISTIC:
        for name in (store.DATA, store.REJECTED):
            assert store.file_hash(chaos / stage / name) == store.file_hash(clean / stage / name), f"{stage}/{name}"
    for stage, name in (("generate", store.DATA), ("filter", store.DATA), ("filter", store.REJECTED),
                        ("build", store.DATA), ("build", "sft.parquet"), ("eval", store.DATA)):
        assert _rows(pl.read_parquet(chaos / stage / name)).equals(
            _rows(pl.read_parquet(clean / stage / name))), f"{stage}/{name}"
    for stage in ("sft", "grpo"):  # resumed training equals uninterrupted training
        resumed, _ = lora.read(chaos / stage / lora.ADAPTER)
        whole, _ = lora.read(clean / stage / lora.ADAPTER)
        assert max(float(np.abs(resumed[k] - whole[k]).max()) for k in whole) <= 1e-5, stage
    leftovers = [p for p in chaos.rglob("*") if p.name.endswith(".tmp") or re.match(r"^\.\w.*\.\w{8}$", p.name)]
    assert not leftovers, f"temp files left behind: {leftovers}"
    keys = [json.loads(line)["key"] for line in (chaos / "generate" / "requests.jsonl").read_text().splitlines()
            if line.endswith("}")]
    assert len(keys) == len(set(keys)), "a teacher sample was asked for again after it was recorded"


def test_sigkilled_cli_runs_resume_to_the_outputs_of_a_clean_run(tmp_path):
    config = load_config("tiny")
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "0")))
    with FakeOpenAI(answer=_solver(config), latency_s=0.2) as teacher:
        clean = tmp_path / "clean" / "runs" / "tiny" / "v1"
        started = time.monotonic()
        proc = _run_cli(clean, _sets(teacher.base_url))
        assert proc.wait(600) == 0
        duration = time.monotonic() - started
        samples = teacher.requests
        teacher.requests = 0
        chaos = tmp_path / "chaos" / "runs" / "tiny" / "v1"
        killed_at = []
        for _ in range(KILLS):
            proc = _run_cli(chaos, _sets(teacher.base_url))
            delay = rng.uniform(0.1, 0.9) * duration
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                killed_at.append(round(delay, 1))
        proc = _run_cli(chaos, _sets(teacher.base_url))
        assert proc.wait(600) == 0, f"the run did not complete after kills at {killed_at} s"
        # Each kill can lose at most the requests in flight (teacher.concurrency) before they were recorded.
        assert teacher.requests <= samples + 2 * len(killed_at)
    assert killed_at, "no kill landed before the run finished"
    _compare(chaos, clean)


def test_sigkilled_served_flow_runs_resume_to_the_outputs_of_a_clean_run(tmp_path):
    """The same through `distillery up`: the server, its runner and the flow run are killed together."""
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "0")) + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PATH=f"{BIN}:{env.get('PATH', '')}")

    def served_run(cwd: Path, kill_after: float | None) -> str:
        """Start `distillery up` in `cwd`, run curate-and-train/tiny, kill all after `kill_after` s; its end state."""
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        up = subprocess.Popen([str(BIN / "distillery"), "up", "--port", str(port)], cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    _api(api_url, "/deployments/name/curate-and-train/tiny")
                    break
                except OSError:
                    assert time.monotonic() < deadline and up.poll() is None, "the deployments never appeared"
                    time.sleep(1)
            triggered = subprocess.run([str(BIN / "prefect"), "deployment", "run", "curate-and-train/tiny"],
                                       env={**env, "PREFECT_API_URL": api_url}, capture_output=True, text=True,
                                       timeout=120)
            run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout).group(1)
            started = time.monotonic()
            while True:
                state = _api(api_url, f"/flow_runs/{run_id}")["state"]["type"]
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    return state
                if kill_after is not None and time.monotonic() - started > kill_after:
                    return "KILLED"
                assert time.monotonic() - started < 900, "the served run did not finish in 15 minutes"
                time.sleep(0.5)
        finally:
            _kill_group(up)

    clean_dir, chaos_dir = tmp_path / "clean", tmp_path / "chaos"
    for folder in (clean_dir, chaos_dir):
        folder.mkdir()
    started = time.monotonic()
    assert served_run(clean_dir, None) == "COMPLETED"
    duration = time.monotonic() - started
    kills = 0
    for _ in range(KILLS):
        kills += served_run(chaos_dir, rng.uniform(0.1, 0.6) * duration) == "KILLED"
    assert served_run(chaos_dir, None) == "COMPLETED"
    assert kills, "no kill landed before the run finished"
    _compare(chaos_dir / "runs" / "tiny" / "v1", clean_dir / "runs" / "tiny" / "v1")
