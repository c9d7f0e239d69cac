"""Tokens and dollars: what the teacher and the judge billed, in stats, the card and the summary, and the estimate."""

from __future__ import annotations

import json

import pytest

from curation import build, dedup, filters, generate, pull
from curation.estimate import estimate
from curation.judge import Judge
from curation.teacher import SamplingParams, prompts
from curation.teacher.cache import RequestCache
from curation.teacher.openai_compat import RetryPolicy
from data_cards import cards
from flows import cli, report
from machinery import stats, store
from machinery.config import (
    BuildConfig,
    ConfigError,
    DedupConfig,
    FilterConfig,
    JudgeConfig,
    ProceduralSource,
    PullConfig,
    TeacherConfig,
    load_config,
)
from tests.support.fake_openai import FakeOpenAI, varying_usage

PRICE = {"input": 3.0, "output": 15.0}  # dollars per million tokens
JUDGE_PRICE = {"input": 0.5, "output": 2.0}


def _right(prompt: str) -> str:
    """A right answer to a chain_sum problem, in the trace format."""
    problem = json.loads(prompt)[-1]["content"]
    expression = problem.split(":")[-1].replace("=", "").strip()
    value = eval(expression, {"__builtins__": {}})  # our own generator's arithmetic
    return f"<reasoning>\n{expression} = {value}\n</reasoning>\n<answer>\n{value}\n</answer>"


def _sometimes_malformed(key: str, attempt: int) -> str | None:
    """A billed malformed answer for a stable share of first attempts, a 500 (no usage) for another."""
    if attempt > 1:
        return None
    return {0: "malformed", 1: "500"}.get(int(key[:8], 16) % 5)


def _deduplicated(tmp_path, n: int = 24):
    run = tmp_path / "runs" / "arith" / "v1"
    pull.run(run, PullConfig(seed=5, sources=[ProceduralSource(task="chain_sum", n=n)]))
    dedup.run(run, DedupConfig())
    return run


def _dollars(prompt_tokens: int, completion_tokens: int, price: dict[str, float]) -> float:
    return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1e6


def test_card_and_summary_hold_the_tokens_the_servers_sent_and_their_price(tmp_path):
    run = _deduplicated(tmp_path)
    with FakeOpenAI(answer=_right, usage=varying_usage, faults=_sometimes_malformed, bill_malformed=True) as teacher:
        generate.run(run, TeacherConfig(backend="openai", base_url=teacher.base_url, model="fake", n=2,
                                        max_attempts=3, price=PRICE))
    sent = teacher.usage_sent
    with FakeOpenAI(answer=lambda prompt: "SOUND", usage=varying_usage) as judge:
        filters.run(run, FilterConfig(judge=JudgeConfig(base_url=judge.base_url, model="judge", price=JUDGE_PRICE)))
    build.run(run, BuildConfig(val_fraction=0.25), student="gemma3-270m", seed=5)
    cards.run(run, seed=5)

    made = stats.read(run, "generate", generate.GenerateStats)
    assert (made.prompt_tokens, made.completion_tokens) == (sent["prompt_tokens"], sent["completion_tokens"])
    assert made.retries > 0 and made.billed_requests > made.requests_sent - made.retries  # malformed ones billed
    assert made.cost_usd == pytest.approx(_dollars(sent["prompt_tokens"], sent["completion_tokens"], PRICE))
    (url, usage), = made.endpoint_usage.items()
    assert usage["prompt_tokens"] == sent["prompt_tokens"] and made.endpoint_cost_usd[url] == made.cost_usd
    judged = stats.read(run, "filter", filters.FilterStats)
    assert (judged.judge["prompt_tokens"], judged.judge["completion_tokens"]) == (
        judge.usage_sent["prompt_tokens"], judge.usage_sent["completion_tokens"])
    assert judged.judge["cost_usd"] == pytest.approx(
        _dollars(judge.usage_sent["prompt_tokens"], judge.usage_sent["completion_tokens"], JUDGE_PRICE))

    text = (run / "cards" / "sft" / "README.md").read_text()
    per_trace = round((sent["prompt_tokens"] + sent["completion_tokens"]) / judged.kept, 1)
    row = (f"| generate | teacher, all endpoints | {made.billed_requests} | {made.retries} | {sent['prompt_tokens']} "
           f"| {sent['completion_tokens']} | {per_trace} | {made.seconds} | \\${made.cost_usd:.4f} |")  # `$` escaped for the Hub's math
    assert row in text
    assert f"| filter | judge | {judged.judge['billed']:.0f} |" in text
    summary = report.stage_line("generate", run)
    assert (f"{sent['prompt_tokens']:,} prompt + {sent['completion_tokens']:,} completion tokens, "
            f"${made.cost_usd:.4f}") in summary
    assert "judge cost:" in report.final(run)


def test_a_resumed_run_does_not_bill_its_cache_hits_again(tmp_path):
    run = _deduplicated(tmp_path, n=10)
    with FakeOpenAI(usage=varying_usage) as server:
        config = TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=2, price=PRICE)
        generate.run(run, config)
        first = stats.read(run, "generate", generate.GenerateStats)
        sent = dict(server.usage_sent)
        generate.run(run, config, force=True)  # every sample is in the request cache now
    again = stats.read(run, "generate", generate.GenerateStats)
    assert first.completion_tokens == sent["completion_tokens"] > 0 and server.usage_sent == sent
    assert again.from_cache == again.kept == 20
    assert (again.prompt_tokens, again.completion_tokens, again.billed_requests, again.cost_usd) == (0, 0, 0, 0.0)


def test_each_endpoint_is_billed_at_its_own_price(tmp_path):
    run = _deduplicated(tmp_path, n=12)
    prices = [{"input": 1.0, "output": 2.0}, {"input": 10.0, "output": 40.0}]
    with FakeOpenAI(usage=varying_usage, latency_s=0.02) as one, FakeOpenAI(usage=varying_usage, latency_s=0.02) as two:
        generate.run(run, TeacherConfig(backend="openai", base_url=[one.base_url, two.base_url], model="fake", n=1,
                                        concurrency=4, price=prices))
    made = stats.read(run, "generate", generate.GenerateStats)
    for server, price in ((one, prices[0]), (two, prices[1])):
        usage = made.endpoint_usage[server.base_url]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == tuple(server.usage_sent.values())
        assert made.endpoint_cost_usd[server.base_url] == pytest.approx(
            _dollars(usage["prompt_tokens"], usage["completion_tokens"], price))
    assert made.cost_usd == pytest.approx(sum(made.endpoint_cost_usd.values()))


def test_a_price_list_must_match_the_endpoint_list():
    urls = 'teacher.base_url=["http://a.example/v1", "http://b.example/v1", "http://c.example/v1"]'
    with pytest.raises(ConfigError, match="teacher.price lists 2 prices for 3 teacher.base_url endpoints"):
        load_config(None, None, [urls, "teacher.price=[{input: 1, output: 2}, {input: 3, output: 4}]"])
    # one price, alone or in a list of one, is every endpoint's
    assert load_config(None, None, [urls, "teacher.price={input: 1, output: 2}"]).teacher.prices() == [(1, 2)] * 3
    assert load_config(None, None, [urls, "teacher.price=[{input: 1, output: 2}]"]).teacher.prices() == [(1, 2)] * 3
    with pytest.raises(ConfigError, match=r"teacher.price.0.input: Input should be greater than or equal to 0"):
        load_config(None, None, ["teacher.price={input: -1, output: 2}"])


def test_a_failure_without_usage_is_a_retry_not_a_bill():
    with FakeOpenAI(faults=lambda key, attempt: "500" if attempt == 1 else None, usage=varying_usage) as server:
        client = generate.make_teacher(TeacherConfig(backend="openai", base_url=server.base_url, model="fake"), None,
                                       progress=False)
        client.retry = RetryPolicy(max_attempts=3, base_s=0.01)
        client.generate([prompts.build(f"What is {i} + 1?", "openai/gsm8k") for i in range(3)], SamplingParams(n=2))
    (usage,) = client.endpoint_usage().values()
    assert usage == {"requests": 6, "billed": 3, "retries": 3, **server.usage_sent}


def test_the_judge_bills_nothing_for_verdicts_in_its_cache(tmp_path):
    with FakeOpenAI(answer=lambda prompt: "SOUND", usage=varying_usage) as server:
        config = JudgeConfig(base_url=server.base_url, model="judge", price=JUDGE_PRICE)
        first = Judge(config, api_key=None, cache=RequestCache(tmp_path / "judge.jsonl"), progress=False)
        first.judge(["1 + 1?", "2 + 2?"], ["2", "4"], ["2", "4"])
        again = Judge(config, api_key=None, cache=RequestCache(tmp_path / "judge.jsonl"), progress=False)
        again.judge(["1 + 1?", "2 + 2?"], ["2", "4"], ["2", "4"])
    assert first.figures()["completion_tokens"] == server.usage_sent["completion_tokens"]
    assert again.figures()["from_cache"] == 2
    assert (again.figures()["billed"], again.figures()["completion_tokens"], again.figures()["cost_usd"]) == (0, 0, 0)


def test_the_estimate_comes_within_a_quarter_of_the_real_bill_and_writes_nothing(tmp_path, capsys):
    run = _deduplicated(tmp_path, n=60)
    with FakeOpenAI(answer=_right, usage=varying_usage) as server:
        sets = ["--set", "teacher.backend=openai", "--set", f"teacher.base_url={server.base_url}",
                "--set", "teacher.model=fake", "--set", "teacher.n=2", "--set", "teacher.style=chat", "--set", "teacher.api_key_env=null",
                "--set", "teacher.price={input: 3, output: 15}"]
        assert cli.main(["estimate", "--run", str(run), *sets]) == 0
        printed = capsys.readouterr().out
        spent = dict(server.usage_sent)
        assert not (run / "generate").exists()  # the estimate leaves the stage's folder alone
        config = load_config(None, None, [value for value in sets if value != "--set"])
        guess = estimate(run, config.teacher, seed=config.seed)
        before = dict(server.usage_sent)
        generate.run(run, config.teacher)
    made = stats.read(run, "generate", generate.GenerateStats)
    real = made.prompt_tokens + made.completion_tokens
    assert made.prompt_tokens == server.usage_sent["prompt_tokens"] - before["prompt_tokens"]
    assert abs(guess.expected_prompt_tokens + guess.expected_completion_tokens - real) <= 0.25 * real
    assert guess.expected_cost_usd == pytest.approx(guess.cost_usd * 60 / 8)
    # what the command printed: its own bill (what the server sent it) and the stage's expected one
    assert f"billed {spent['prompt_tokens']:,} prompt + {spent['completion_tokens']:,} completion tokens" in printed
    assert "generate stage (60 problems x 2 = 120 samples): about" in printed


def test_the_embedded_teacher_reports_its_tokens_and_cpu_seconds(tmp_path):
    from curation.teacher.tunix_local import TunixTeacher
    from data_cards.facts import cost_rows
    from models import registry

    run = _deduplicated(tmp_path, n=3)
    config = TeacherConfig(backend="tunix", model=registry.TINY, n=2, max_new_tokens=8, price=PRICE)
    generate.run(run, config, teacher=TunixTeacher(registry.load(registry.TINY, seed=0), batch_size=4, progress=False))
    made = stats.read(run, "generate", generate.GenerateStats)
    rows = store.finished(run, "generate").read()
    assert made.cpu_s > 0 and made.cost_usd is None  # no endpoint bills it: its price is this machine's time
    assert (made.prompt_tokens, made.completion_tokens) == (rows["prompt_tokens"].sum(), rows["completion_tokens"].sum())
    line = cost_rows(made, filters.FilterStats(rows_in=6, kept=3, rejected=3))[-1]
    assert line["spent"] == f"{made.cpu_s:.1f} CPU-s" and line["tokens_per_trace"] == round(
        (made.prompt_tokens + made.completion_tokens) / 3, 1)
