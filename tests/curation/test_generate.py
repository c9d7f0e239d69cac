"""The OpenAI-compatible teacher and the generate stage: retries, timeouts, resume, error rows."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import polars as pl
import pytest

from curation import dedup, generate, pull
from curation.teacher import SamplingParams, prompts
from curation.teacher.cache import RequestCache
from curation.teacher.openai_compat import OpenAITeacher, RetryPolicy
from machinery import store
from machinery.config import DedupConfig, ProceduralSource, PullConfig, TeacherConfig
from tests.support.fake_openai import FakeOpenAI, flaky, varying_usage
from tests.support.kill import kill_after_cached

FAST_RETRY = RetryPolicy(max_attempts=4, base_s=0.01, cap_s=2.0)


def _prompts(n: int) -> list:
    return [prompts.build(f"What is {i} + 1?", "openai/gsm8k") for i in range(n)]


def _teacher(server: FakeOpenAI, **kwargs) -> OpenAITeacher:
    options = {"base_url": server.base_url, "model": "fake", "api_key": None, "timeout_s": 5,
               "retry": FAST_RETRY, "progress": False, **kwargs}
    return OpenAITeacher(**options)


def _fail_first(kind: str):
    return lambda key, attempt: kind if attempt == 1 else None


@pytest.mark.parametrize("kind", ["500", "429", "malformed"])
def test_retryable_failures_are_retried_until_answered(kind):
    with FakeOpenAI(faults=_fail_first(kind)) as server:
        out = _teacher(server).generate(_prompts(3), SamplingParams(n=1))
    assert [c.error for c in out] == [None] * 3
    assert [c.attempts for c in out] == [2, 2, 2]
    assert server.requests == 6


def test_retry_after_is_honoured():
    with FakeOpenAI(faults=_fail_first("429")) as server:
        started = time.monotonic()
        out = _teacher(server).generate(_prompts(1), SamplingParams(n=1))
    assert out[0].error is None
    assert time.monotonic() - started >= 1.0  # the server asked for Retry-After: 1


def test_a_stalled_request_times_out_and_is_retried():
    with FakeOpenAI(faults=_fail_first("stall"), stall_s=3) as server:
        started = time.monotonic()
        out = _teacher(server, timeout_s=0.5).generate(_prompts(2), SamplingParams(n=1))
    assert [c.error for c in out] == [None, None] and [c.attempts for c in out] == [2, 2]
    assert time.monotonic() - started < 3  # did not wait for the stalled server


def test_persistent_failure_becomes_an_error_row_not_an_exception():
    with FakeOpenAI(faults=lambda key, attempt: "500") as server:
        out = _teacher(server).generate(_prompts(2), SamplingParams(n=2))
    assert len(out) == 4 and all(c.text is None for c in out)
    assert all("HTTP 500" in c.error and c.attempts == 4 for c in out)


def test_client_errors_are_not_retried():
    with FakeOpenAI(faults=lambda key, attempt: "400") as server:
        out = _teacher(server).generate(_prompts(1), SamplingParams(n=1))
    assert out[0].attempts == 1 and "HTTP 400" in out[0].error


def test_server_without_native_n_gets_one_request_per_sample():
    with FakeOpenAI(supports_n=False) as server:
        out = _teacher(server).generate(_prompts(3), SamplingParams(n=4))
    assert [(c.prompt_idx, c.sample_idx) for c in out] == [(p, s) for p in range(3) for s in range(4)]
    assert all(c.error is None for c in out)
    assert server.requests <= 3 + 3 * 4


def test_cache_resumes_without_asking_again(tmp_path):
    path = tmp_path / "requests.jsonl"
    with FakeOpenAI() as server:
        cache = RequestCache(path)
        first = _teacher(server, cache=cache).generate(_prompts(5), SamplingParams(n=2))
        cache.close()
        asked = server.requests
        cache = RequestCache(path)
        teacher = _teacher(server, cache=cache)
        again = teacher.generate(_prompts(6), SamplingParams(n=2))  # one new problem
        cache.close()
    assert [c.text for c in again[:10]] == [c.text for c in first]
    assert all(c.cached for c in again[:10]) and not any(c.cached for c in again[10:])
    assert server.requests - asked == teacher.requests_sent == 1  # only the new problem, n=2 natively


def test_torn_cache_line_from_a_killed_run_is_skipped(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text('{"key": "a", "text": "x"}\n{"key": "b", "te')
    cache = RequestCache(path)
    cache.put("c", {"text": "y"})
    cache.close()
    assert RequestCache(path).get("a") is not None and RequestCache(path).get("c") is not None
    assert RequestCache(path).get("b") is None


def test_completion_style_prompts_base_models_and_restores_the_stop_tag():
    answer = lambda prompt: "3 + 4 = 7\n</reasoning>\n<answer>\n7\n"  # noqa: E731 - stop cut "</answer>"
    with FakeOpenAI(answer=answer) as server:
        out = _teacher(server, style="completion").generate(_prompts(1), SamplingParams(n=1))
    assert out[0].text == "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7</answer>"


def _prepared_run(tmp_path, n: int = 10):
    run = tmp_path / "ds" / "v1"
    pull.run(run, PullConfig(seed=3, sources=[ProceduralSource(task="basic_arithmetic", n=n)]))
    dedup.run(run, DedupConfig())
    return run


def test_generate_stage_writes_every_sample_and_counts_errors(tmp_path):
    run = _prepared_run(tmp_path)
    problems = store.finished(run, "dedup").read()
    # The fake server keys faults by the request's messages: make the first three problems always fail.
    doomed_ids = problems["id"].to_list()[:3]
    doomed = {hashlib.sha256(json.dumps(list(prompts.build(p, s).messages), sort_keys=True).encode()).hexdigest()
              for p, s in problems.filter(pl.col("id").is_in(doomed_ids)).select("problem", "source").iter_rows()}
    with FakeOpenAI(faults=lambda key, attempt: "500" if key in doomed else None) as server:
        config = TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=2, max_attempts=2)
        generate.run(run, config)
    kept = store.finished(run, "generate").read()
    rejected = pl.read_parquet(run / "generate" / "rejected.parquet")
    assert kept.height == 14 and rejected.height == 6  # 2 samples each of 7 good and 3 doomed problems
    assert sorted(rejected["problem_id"].unique()) == sorted(doomed_ids)
    assert rejected["reject_reason"].to_list() == ["teacher_error"] * 6
    assert rejected["reject_detail"].str.starts_with("InternalServerError: HTTP 500").all()
    assert (rejected["attempts"] == 2).all()  # max_attempts, then a counted reject
    assert kept["error"].is_null().all() and kept["completion"].is_not_null().all()
    stats = json.loads((run / "generate" / "stats.json").read_text())
    assert stats["samples_per_problem"] == 2 and stats["teacher"] == "fake"


def test_cli_generate_against_a_flaky_server_then_resume_after_a_kill(tmp_path):
    """The acceptance check: 500s, 429s with Retry-After and stalls; no error rows; a killed
    run re-run re-asks nothing it already had."""
    run = _prepared_run(tmp_path, n=30)
    delays = lambda prompt: "<reasoning>\nadd\n</reasoning>\n<answer>\n1\n</answer>"  # noqa: E731
    with FakeOpenAI(faults=flaky, stall_s=6, latency_s=0.05, answer=delays, usage=varying_usage) as server:
        argv = [sys.executable, "-m", "flows.cli", "generate", "--run", str(run), "--set", "teacher.backend=openai",
                "--set", f"teacher.base_url={server.base_url}", "--set", "teacher.model=fake",
                "--set", "teacher.n=2", "--set", "teacher.timeout_s=5", "--set", "teacher.concurrency=2"]
        cached_before = kill_after_cached(argv, run / "generate" / "requests.jsonl", 10, timeout=60)
        assert 10 <= len(cached_before) < 60
        time.sleep(0.5)  # a request the killed run left in flight is answered (and billed) to no one
        requests_before, usage_before = server.requests, dict(server.usage_sent)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kept = store.finished(run, "generate").read()
    assert kept.height == 60 and pl.read_parquet(run / "generate" / "rejected.parquet").is_empty()
    assert kept.filter(pl.col("cached")).height >= len(cached_before)
    stats = json.loads((run / "generate" / "stats.json").read_text())
    # the re-run asked only for samples the killed run had not finished
    assert stats["from_cache"] >= len(cached_before)
    assert server.requests - requests_before == stats["requests_sent"]
    # and was billed for exactly what the server sent it after the kill: no cache hit billed again
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (
        server.usage_sent["prompt_tokens"] - usage_before["prompt_tokens"],
        server.usage_sent["completion_tokens"] - usage_before["completion_tokens"])
    assert stats["cost_usd"] is None and f"{stats['completion_tokens']:,} completion tokens (no price set)" in done.stdout
    assert "60 samples of 60" in done.stdout and "0 teacher errors" in done.stdout
