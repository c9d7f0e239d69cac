"""The filter's phases over files: the same output however the rows are cut, resume per phase, the judge per task."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from curation import filters
from curation.sources import procedural
from machinery import shards, store
from machinery.config import FilterConfig, JudgeConfig
from machinery.execution import LocalExecutor
from tests.curation.test_judge import _traces, judge_answer
from tests.support import traces
from tests.support.fake_openai import FakeOpenAI

PHASES = (filters.CHECKS, filters.CROSS, filters.WRITE, filters.RATES)
TABLES = (store.DATA, store.REJECTED, "pass_rates.parquet")


def _inputs(n: int = 12, samples: int = 6) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Problems (three more than have traces) and `samples` real-looking traces each, ~30% spoiled."""
    problems, _ = procedural.load("basic_arithmetic", n + 3, seed=1)
    problems = problems.with_columns(solution=pl.format("We work it out: {} is {}.", pl.col("problem"),
                                                        pl.col("answer")))
    return traces.generations(problems.head(n), samples), problems


def _stats(result: store.StageResult) -> dict:
    figures = dataclasses.asdict(result.stats)
    figures.pop("seconds")
    return figures


def test_the_output_does_not_depend_on_shard_size_or_partition_count():
    generations, problems = _inputs()
    config = FilterConfig(min_tokens=1, keep_per_problem=2)
    whole = filters.filter_traces(generations, problems, config)
    cut = filters.filter_traces(generations, problems, config, plan=shards.in_memory(7), partition_traces=10)
    assert filters.phases.partition_count(generations.height, 10) == 8
    assert whole.kept.equals(cut.kept) and whole.rejected.equals(cut.rejected)
    assert whole.extra["pass_rates"].equals(cut.extra["pass_rates"])
    assert _stats(whole) == _stats(cut)
    reasons = whole.stats.reasons
    assert {"near_duplicate_trace", "best_of_n_surplus", "wrong_answer"} <= set(reasons)
    # pass rates in the problems' order, and the three problems without a trace have none
    assert whole.extra["pass_rates"]["problem_id"].to_list() == problems["id"].to_list()
    assert whole.extra["pass_rates"]["pass_rate"].tail(3).to_list() == [None] * 3
    assert whole.stats.problems == 15 and sum(whole.stats.pass_rate_histogram.values()) == 12


def _run_folder(where: Path, generations: pl.DataFrame, problems: pl.DataFrame) -> Path:
    """A run folder holding finished dedup (the problems) and generate (the traces) outputs."""
    run = where / "ds" / "v1"
    for stage, table in (("dedup", problems), ("generate", generations)):
        result = store.StageResult(kept=table, rejected=table.clear(),
                                   stats=store.StageStats(rows_in=table.height, kept=table.height, rejected=0))
        store.run_stage(run, stage, config={}, inputs={}, compute=lambda r=result: r)
    return run


def test_stage_outputs_are_byte_identical_for_other_shard_sizes_and_partitions(tmp_path):
    generations, problems = _inputs()
    base = _run_folder(tmp_path / "a", generations, problems)
    other = _run_folder(tmp_path / "b", generations, problems)
    filters.run(base, FilterConfig(min_tokens=1))
    filters.run(other, FilterConfig(min_tokens=1), shard_rows=5, partition_traces=9)
    for name in TABLES:
        assert (base / "filter" / name).read_bytes() == (other / "filter" / name).read_bytes(), name
    record = json.loads((other / "filter" / "execution.json").read_text())["work"]
    assert len(record[filters.CHECKS]["computed"]) == 15 and len(record[filters.CROSS]["computed"]) == 8
    assert not (other / "filter" / "shards").exists()  # partition files go with the shards
    assert store.finished(other, "filter").read().height == pl.read_parquet(base / "filter" / store.DATA).height


class _Killed(Exception):
    pass


class _KilledAt(LocalExecutor):
    """The local engine, killed in the middle of one work: after `after` of its items."""

    def __init__(self, work: str, after: int):
        super().__init__()
        self.work, self.after = work, after

    def map(self, fn, items, *, name, shared=None):
        for index, result in super().map(fn, items, name=name, shared=shared):
            yield index, result
            if name == self.work and index + 1 >= self.after:
                raise _Killed(f"killed in {name}")


@pytest.mark.parametrize("work", PHASES)
def test_a_run_killed_in_a_phase_redoes_only_that_phases_missing_tasks(tmp_path, work):
    generations, problems = _inputs()
    expected = _run_folder(tmp_path / "expected", generations, problems)
    killed = _run_folder(tmp_path / "killed", generations, problems)
    layout = {"shard_rows": 10, "partition_traces": 30}  # 8 row shards, 3 partitions, 2 chunks of problems
    filters.run(expected, FilterConfig(min_tokens=1), **layout)
    after = 1
    with pytest.raises(_Killed):
        filters.run(killed, FilterConfig(min_tokens=1), executor=_KilledAt(work, after), **layout)
    filters.run(killed, FilterConfig(min_tokens=1), **layout)
    record = json.loads((killed / "filter" / "execution.json").read_text())["work"]
    total = {filters.CHECKS: 8, filters.CROSS: 3, filters.WRITE: 8, filters.RATES: 2}
    for phase in PHASES:
        done_before = PHASES.index(phase) < PHASES.index(work)
        reused = total[phase] if done_before else after if phase == work else 0
        assert (len(record[phase]["reused"]), len(record[phase]["computed"])) == (reused, total[phase] - reused), \
            phase
    for name in TABLES:
        assert (expected / "filter" / name).read_bytes() == (killed / "filter" / name).read_bytes(), name
    assert _stats_file(expected) == _stats_file(killed)


def _stats_file(run: Path) -> dict:
    figures = json.loads((run / "filter" / store.STATS).read_text())
    figures.pop("seconds")
    return figures


class _Elsewhere(LocalExecutor):
    """An engine whose tasks run in other processes (as Ray's do): each partition task makes its own judge."""

    name = "elsewhere"
    in_process = False


def test_partition_tasks_each_ask_their_judge_with_a_cache_of_their_own_and_no_key_in_any_file(tmp_path):
    generations, problems, flawed = _traces(9)
    generations = generations.cast({"sample_idx": pl.Int32, "completion_tokens": pl.Int32})
    run = _run_folder(tmp_path, generations, problems)
    secret = "sk-never-in-a-file-4242"
    with FakeOpenAI(answer=judge_answer) as server:
        config = FilterConfig(min_tokens=1, judge=JudgeConfig(base_url=server.base_url, model="judge",
                                                              price={"input": 1.0, "output": 2.0}))
        filters.run(run, config, judge_api_key=secret, executor=_Elsewhere(), shard_rows=4, partition_traces=3)
        assert server.requests == 9 and server.authorizations == {f"Bearer {secret}"}
        stats = json.loads((run / "filter" / store.STATS).read_text())
        caches = sorted(p.name for p in (run / "filter").glob("judge*.jsonl"))
        assert len(caches) == 3 and all(name.startswith("judge-problems-") for name in caches)
        assert stats["judge"]["requests"] == 9 and stats["judge"]["from_cache"] == 0
        assert stats["judge"]["cost_usd"] == pytest.approx((stats["judge"]["prompt_tokens"] * 1.0
                                                            + stats["judge"]["completion_tokens"] * 2.0) / 1e6)
        rejected = store.finished(run, "filter").read(store.REJECTED)
        assert set(rejected["problem_id"]) == flawed and set(rejected["reject_reason"]) == {"judge_rejected"}
        # forced again, in this process: every verdict comes from the partition tasks' caches
        filters.run(run, config, judge_api_key=secret, force=True, partition_traces=3)
        assert server.requests == 9
    again = json.loads((run / "filter" / store.STATS).read_text())["judge"]
    assert (again["requests"], again["from_cache"]) == (0, 9)
    for file in run.rglob("*"):
        assert not file.is_file() or secret.encode() not in file.read_bytes(), file


def test_a_partition_file_out_of_row_order_is_an_error_naming_it(tmp_path):
    generations, problems = _inputs(n=4, samples=2)
    plan = shards.Plan(executor=LocalExecutor(), shards=shards.FolderShards(tmp_path, "0" * 16), shard_rows=4)
    filters.filter_traces(generations, problems, FilterConfig(min_tokens=1), plan=plan)
    first, second = sorted(plan.folder.glob("checks-*.partitions.parquet"))  # two shards of 4 rows, one partition
    shutil.copy(first, plan.folder / "swap")
    shutil.copy(second, first)
    shutil.copy(plan.folder / "swap", second)
    for marker in plan.folder.glob("problems-*.done.json"):
        marker.unlink()
    with pytest.raises(RuntimeError, match=r"not in increasing order"):
        filters.filter_traces(generations, problems, FilterConfig(min_tokens=1), plan=plan)
