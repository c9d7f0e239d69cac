"""Shards: finished ones survive and are reused, unfinished ones are redone, and no output depends on them."""

from __future__ import annotations

import polars as pl
import pytest

from curation import dedup, filters
from curation.sources import procedural
from machinery import shards
from machinery.config import DedupConfig, FilterConfig
from machinery.execution import ExecutionError, LocalExecutor
from tests.support import traces


def _double(item: int, *, calls: list[int]) -> shards.ShardOutput:
    calls.append(item)
    return shards.ShardOutput(tables={"x": pl.DataFrame({"x": [item * 2]})}, counts={"item": item})


def test_row_ranges_cover_every_row_once_and_name_their_rows():
    assert shards.row_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert shards.row_ranges(0, 3) == [(0, 0)]  # an empty input is one empty shard, not none
    assert shards.rows_label("filter", 3, 6) == "filter-0000000003-0000000006"


def test_a_finished_shard_is_reused_and_an_unfinished_one_redone(tmp_path):
    folder = shards.FolderShards(tmp_path / "stage", "a" * 64)
    calls: list[int] = []
    items = [("s0", 0), ("s1", 1), ("s2", 2)]
    shards.run(LocalExecutor(), folder, _double, items, name="w", shared={"calls": calls})
    (folder.folder / "s1.done.json").unlink()  # as if killed after writing s1's table, before its marker
    report: dict[str, shards.Report] = {}
    labels = shards.run(LocalExecutor(), folder, _double, items, name="w", shared={"calls": calls}, report=report)
    assert calls == [0, 1, 2, 1]
    assert (report["w"].computed, report["w"].reused) == (["s1"], ["s0", "s2"])
    assert [folder.table(label, "x")["x"][0] for label in labels] == [0, 2, 4]
    assert folder.counts("s2") == {"item": 2}


def test_a_scratch_plan_keeps_shard_files_where_a_phase_can_find_them_and_removes_them_after():
    with shards.scratch_plan(shard_rows=4) as plan:
        labels = plan.run(_double, [("s0", 0), ("s1", 1)], name="w", shared={"calls": []})
        assert pl.read_parquet(plan.path(labels[1], "x"))["x"].to_list() == [2]
        (plan.folder / "parts").mkdir()  # a phase's own files live beside the shards
        root = plan.folder
    assert not root.exists()
    with pytest.raises(ExecutionError, match="scratch_plan"):
        shards.in_memory().folder


def test_shards_of_another_stage_key_are_dropped_when_a_stage_starts(tmp_path):
    old = shards.FolderShards(tmp_path / "stage", "a" * 64)
    shards.run(LocalExecutor(), old, _double, [("s0", 0)], name="w", shared={"calls": []})
    new = shards.FolderShards(tmp_path / "stage", "b" * 64)
    new.start(force=False)
    assert not old.folder.exists() and not new.done("s0")


def test_shards_in_memory_refuse_an_engine_that_runs_elsewhere():
    class Elsewhere(LocalExecutor):
        in_process = False

    with pytest.raises(ExecutionError, match="needs shards on disk"):
        shards.run(Elsewhere(), shards.MemoryShards(), _double, [("s0", 0)], name="w", shared={"calls": []})


def test_dedup_output_does_not_depend_on_the_shards():
    problems, _ = procedural.load("gsm_symbolic", 60, seed=2)
    problems = pl.concat([problems, problems.head(5).with_columns(id=pl.col("id") + "-copy")])
    bench = problems.slice(10, 3).select("source", "source_id", "problem")
    params = dedup.Params.from_config(DedupConfig())
    whole = dedup.dedup(problems, bench, params, _NoEarlier()).result
    cut = dedup.dedup(problems, bench, params, _NoEarlier(), plan=shards.in_memory(shard_rows=7)).result
    assert whole.kept.equals(cut.kept) and whole.rejected.equals(cut.rejected)
    assert whole.stats.reasons == cut.stats.reasons and whole.stats.reasons["exact_duplicate"] == 5


def test_filter_output_does_not_depend_on_the_shards():
    problems, _ = procedural.load("basic_arithmetic", 12, seed=1)
    problems = problems.with_columns(solution=pl.format("We work it out: {} is {}.", pl.col("problem"),
                                                        pl.col("answer")))
    generations = traces.generations(problems, 6)
    whole = filters.filter_traces(generations, problems, FilterConfig(min_tokens=1))
    cut = filters.filter_traces(generations, problems, FilterConfig(min_tokens=1), plan=shards.in_memory(5))
    assert whole.kept.equals(cut.kept) and whole.rejected.equals(cut.rejected)
    assert whole.stats.audit == cut.stats.audit and len(whole.stats.reasons) >= 3


def test_stages_take_no_rows_at_all():
    empty = procedural.load("basic_arithmetic", 1, seed=1)[0].clear()
    out = dedup.dedup(empty, empty.select("source", "source_id", "problem"),
                      dedup.Params.from_config(DedupConfig()), _NoEarlier()).result
    assert (out.kept.height, out.rejected.height) == (0, 0)
    checked = filters.filter_traces(traces.generations(empty, 2), empty, FilterConfig())
    assert (checked.kept.height, checked.rejected.height) == (0, 0)


class _NoEarlier:
    def versions(self):
        return []

    def match(self, keys, sigs, params):
        return [None] * len(keys)
