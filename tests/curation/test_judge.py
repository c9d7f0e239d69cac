"""The optional LLM judge: every sent trace ends with a verdict despite faults, and a killed run re-asks nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from curation import dedup, filters, generate, judge, pull
from curation.sources import procedural
from curation.teacher.prompts import format_trace
from machinery import store
from machinery.config import (
    DedupConfig,
    FilterConfig,
    JudgeConfig,
    ProceduralSource,
    PullConfig,
    TeacherConfig,
)
from tests.support.fake_openai import FakeOpenAI, flaky
from tests.support.kill import kill_after_cached

FLAW = "I guess"  # the fake judge calls a trace unsound when its reasoning says this


def judge_answer(prompt: str) -> str:
    """The fake judge: UNSOUND with a reason for flawed traces, SOUND otherwise."""
    return "UNSOUND: the second step is a guess" if FLAW in prompt else "SOUND"


@pytest.mark.parametrize(("reply", "sound", "reason"), [
    ("SOUND", True, ""),
    ("  sound.", True, ""),
    ("UNSOUND: 3 * 4 is not 13\nmore text", False, "3 * 4 is not 13"),
    ("Unsound", False, "unsound (no reason given)"),
    ("The reasoning looks fine to me.", False, "no SOUND/UNSOUND verdict in the judge's reply: "
                                               "'The reasoning looks fine to me.'"),
])
def test_parse_reads_the_verdict_and_rejects_a_reply_without_one(reply, sound, reason):
    assert judge.parse(reply) == judge.Verdict(sound=sound, reason=reason)


def _traces(n: int) -> tuple[pl.DataFrame, pl.DataFrame, set[str]]:
    """Problems and one right-answer trace each; every third one has a flawed step. Returns the flawed ids."""
    problems, _ = procedural.load("basic_arithmetic", n, seed=11)
    rows, flawed = [], set()
    for i, (pid, gold) in enumerate(problems.select("id", "answer").iter_rows()):
        reasoning = f"Work it out carefully: {FLAW} the result." if i % 3 == 0 else "Work it out carefully, step by step."
        flawed |= {pid} if i % 3 == 0 else set()
        rows.append({"problem_id": pid, "sample_idx": 0, "completion": format_trace(reasoning, gold),
                     "finish_reason": "stop", "completion_tokens": 20})
    return pl.DataFrame(rows), problems, flawed


def test_every_sent_trace_gets_a_verdict_despite_500s_429s_stalls_and_bad_bodies():
    generations, problems, flawed = _traces(24)
    with FakeOpenAI(faults=flaky, stall_s=3, answer=judge_answer) as server:
        config = JudgeConfig(base_url=server.base_url, model="judge", timeout_s=1, max_attempts=5)
        result = filters.filter_traces(generations, problems, FilterConfig(min_tokens=1),
                                       judge=judge.Judge(config, api_key=None, cache=None, progress=False))
        assert server.requests > 24  # the faults were real: some requests were retried
    rejected = result.rejected
    assert "unjudged" not in set(rejected["reject_reason"])
    assert set(rejected.filter(pl.col("reject_reason") == "judge_rejected")["problem_id"]) == flawed
    assert set(rejected["reject_detail"]) == {"the second step is a guess"}
    assert set(result.kept["problem_id"]) == set(problems["id"]) - flawed


def test_a_judge_that_never_answers_leaves_traces_unjudged_and_the_next_run_asks_again(tmp_path):
    run = _judged_run(tmp_path, n=6)
    with FakeOpenAI(faults=lambda key, attempt: "500") as down:
        config = FilterConfig(min_tokens=1, judge=JudgeConfig(base_url=down.base_url, model="judge", max_attempts=2))
        filters.run(run, config)
    assert json.loads((run / "filter" / "stats.json").read_text())["reasons"] == {"unjudged": 6}
    with FakeOpenAI(answer=judge_answer) as up:
        config = FilterConfig(min_tokens=1, judge=JudgeConfig(base_url=up.base_url, model="judge"))
        filters.run(run, config)
        assert up.requests == 6
    assert "unjudged" not in json.loads((run / "filter" / "stats.json").read_text())["reasons"]


def _judged_run(tmp_path, n: int):
    """A run folder through generate, with a fake teacher whose every answer is right (a third flawed)."""
    run = tmp_path / "ds" / "v1"
    pull.run(run, PullConfig(seed=11, sources=[ProceduralSource(task="basic_arithmetic", n=n)]))
    dedup.run(run, DedupConfig())
    _, problems, _ = _traces(n)
    texts = {p: (format_trace(f"{FLAW} it.", a) if i % 3 == 0 else format_trace("Step by step.", a))
             for i, (p, a) in enumerate(problems.select("problem", "answer").iter_rows())}

    def teacher(prompt: str) -> str:
        asked = max(texts, key=lambda p: prompt.rfind(json.dumps(p)[1:-1]))  # the last problem in the prompt
        return texts[asked]

    with FakeOpenAI(answer=teacher) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=1))
    return run


def test_killed_filter_resumes_without_asking_the_judge_again(tmp_path):
    run = _judged_run(tmp_path, n=30)
    with FakeOpenAI(answer=judge_answer, latency_s=0.2) as server:
        argv = [sys.executable, "-m", "flows.cli", "filter", "--run", str(run), "--set", "filter.min_tokens=1",
                "--set", f"filter.judge={{base_url: '{server.base_url}', model: judge, concurrency: 2}}"]
        asked_before = kill_after_cached(argv, run / "filter" / "judge.jsonl", 8)
        assert 8 <= len(asked_before) < 30
        requests_before = server.requests
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert server.requests - requests_before == 30 - len(asked_before)  # only what the killed run lacked
    stats = json.loads((run / "filter" / "stats.json").read_text())
    assert stats["reasons"] == {"judge_rejected": 10} and stats["kept"] == 20
    assert store.finished(run, "filter").read().height == 20
