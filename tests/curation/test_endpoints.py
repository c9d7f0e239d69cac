"""Several teacher endpoints: least-in-flight choice, benching a failing one, and a replica that dies mid-run."""

from __future__ import annotations

import hashlib
import json

import polars as pl

from curation import dedup, generate, pull
from curation.teacher import prompts
from curation.teacher.endpoints import Endpoints
from machinery import store
from machinery.config import DedupConfig, ProceduralSource, PullConfig, TeacherConfig
from tests.support.fake_openai import FakeOpenAI


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_endpoint_with_fewest_requests_in_flight_gets_the_next():
    pool = Endpoints(["http://a/v1", "http://b/v1", "http://c/v1"])
    first, second, third = pool.pick(), pool.pick(), pool.pick()
    assert [first.url, second.url, third.url] == ["http://a/v1", "http://b/v1", "http://c/v1"]
    pool.done(second, ok=True)  # b is free again: it has the fewest in flight
    assert pool.pick().url == "http://b/v1"


def test_an_endpoint_failing_in_a_row_is_benched_then_tried_again_after_the_cool_down():
    clock = _Clock()
    pool = Endpoints(["http://a/v1", "http://b/v1"], bench_after=3, bench_s=30, clock=clock)
    a = pool.all[0]
    for _ in range(3):
        a.in_flight += 1
        pool.done(a, ok=False)
    assert [pool.pick().url for _ in range(4)] == ["http://b/v1"] * 4  # a is benched
    clock.now = 31
    for endpoint in pool.all:
        endpoint.in_flight = 0
    assert pool.pick().url == "http://a/v1"  # back after the cool-down
    pool.done(a, ok=False)  # one more failure benches it again at once
    assert pool.counts()["http://a/v1"] == {"requests": 1, "successes": 0, "failures": 4, "benched": 2}


def test_a_request_error_of_the_client_does_not_bench_the_endpoint():
    pool = Endpoints(["http://a/v1", "http://b/v1"], bench_after=1)
    a = pool.pick()
    pool.done(a, ok=False, endpoint_fault=False)  # e.g. HTTP 400: the request's fault, not the server's
    assert [pool.pick().url, pool.pick().url] == ["http://b/v1", "http://a/v1"]  # a still takes its turn
    assert pool.counts()["http://a/v1"] == {"requests": 2, "successes": 0, "failures": 1, "benched": 0}


def _key(problem: str, source: str) -> str:
    """The fake server's key of a problem's request (its chat messages)."""
    return hashlib.sha256(json.dumps(list(prompts.build(problem, source).messages), sort_keys=True).encode()
                          ).hexdigest()


def test_generate_completes_when_one_of_two_endpoints_dies_mid_run(tmp_path):
    run = tmp_path / "ds" / "v1"
    pull.run(run, PullConfig(seed=3, sources=[ProceduralSource(task="basic_arithmetic", n=40)]))
    dedup.run(run, DedupConfig())
    problems = store.finished(run, "dedup").read()
    with FakeOpenAI(latency_s=0.02) as steady, FakeOpenAI(latency_s=0.02, die_after=6) as dying:
        config = TeacherConfig(backend="openai", base_url=[steady.base_url, dying.base_url], model="fake", n=2,
                               concurrency=4, bench_after=2, bench_s=60)
        generate.run(run, config)
    kept = store.finished(run, "generate").read()
    assert kept.height == problems.height * 2 and pl.read_parquet(run / "generate" / "rejected.parquet").is_empty()
    # Every problem was answered exactly once (one request for both samples): never asked again after success.
    keys = [_key(p, s) for p, s in problems.select("problem", "source").iter_rows()]
    assert [steady.answered[k] + dying.answered[k] for k in keys] == [1] * len(keys)
    stats = json.loads((run / "generate" / "stats.json").read_text())
    split = stats["endpoints"]
    assert split[dying.base_url]["successes"] == 6 and split[dying.base_url]["benched"] >= 1
    assert split[dying.base_url]["failures"] >= 2  # the dropped connections that benched it
    assert split[steady.base_url] == {"requests": problems.height - 6, "successes": problems.height - 6,
                                      "failures": 0, "benched": 0}
    assert sum(e["requests"] for e in split.values()) == stats["requests_sent"]


def test_endpoints_are_counted_and_logged_by_their_url_with_credentials_redacted(caplog):
    # Two URLs equal once redacted keep separate counts.
    pool = Endpoints(["https://u:sk-one@a.example/v1", "https://u:sk-two@a.example/v1",
                      "https://b.example/v1?key=sk-three"], bench_after=1)
    first = pool.pick()
    with caplog.at_level("WARNING"):
        pool.done(first, ok=False)
    assert first.url == "https://u:sk-one@a.example/v1"  # the client still gets the whole URL
    assert list(pool.counts()) == ["https://***@a.example/v1", "https://***@a.example/v1#2",
                                   "https://b.example/v1?key=***"]
    assert "https://***@a.example/v1 failed 1 requests in a row" in caplog.text
    assert not [s for s in ("sk-one", "sk-two", "sk-three") if s in caplog.text or s in json.dumps(pool.counts())]
