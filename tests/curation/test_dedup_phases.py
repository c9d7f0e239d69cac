"""The dedup stage in phases: the same outputs however the rows are cut, checked partitions, resume per phase."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl
import pytest

from curation import dedup, dedup_partitions, dedup_shards, minhash, pull
from curation.dedup_index import LocalIndex
from machinery import shards, store
from machinery.config import DedupConfig, HubSource, PullConfig
from machinery.execution import LocalExecutor
from machinery.schema import problem_id

WORDS = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("a", "e", "i", "o", "u", "an", "el", "or")]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) if rng.random() < 0.85 else str(rng.randint(1, 999)) for _ in range(60))


def _edit(text: str, rng: random.Random) -> str:
    words = text.split()
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _frame(texts: list[str], source: str = "t") -> pl.DataFrame:
    return pl.DataFrame({"id": [problem_id(source, str(i)) for i in range(len(texts))], "problem": texts})


def _corpus() -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Rows with exact copies, small near clusters, and one cluster of 80 (LSH runs longer than the pair rule's 64)
    whose first rows copy a benchmark item; the benchmark; and an earlier version's texts."""
    rng = random.Random(11)
    bench_texts = [_text(rng) for _ in range(5)]
    texts = [_text(rng) for _ in range(150)]
    texts += [_edit(t, rng) for t in texts[:30]] + texts[30:40]
    big = _text(rng)
    texts += [bench_texts[0]] * 2 + [big] + [_edit(big, rng) for _ in range(79)]
    bench_texts[0] = big
    rng.shuffle(texts)
    earlier = [_edit(t, rng) for t in rng.sample(texts, 20)]
    bench = pl.DataFrame({"source": "bench", "source_id": [str(i) for i in range(5)], "problem": bench_texts})
    return _frame(texts), bench, earlier


class _NoEarlier:
    def versions(self):
        return []

    def match(self, keys, sigs, params):
        return [None] * len(keys)


def _index(folder, earlier: list[str], params: dedup.Params) -> LocalIndex:
    LocalIndex(folder, "v1", params).add([f"old-{i}" for i in range(len(earlier))], dedup.exact_keys(earlier),
                                         minhash.signatures(earlier, shingle=params.shingle,
                                                            num_perm=params.num_perm, seed=params.seed))
    return LocalIndex(folder, "v2", params)


def test_outputs_do_not_depend_on_the_shard_size(tmp_path):
    problems, bench, earlier = _corpus()
    params = dedup.Params.from_config(DedupConfig())
    index = _index(tmp_path / "ds", earlier, params)
    outs = {rows: dedup.dedup(problems, bench, params, index, plan=shards.in_memory(rows)).result
            for rows in (7, 64, 100_000)}
    for rows in (7, 64):
        assert outs[rows].kept.equals(outs[100_000].kept) and outs[rows].rejected.equals(outs[100_000].rejected)
        assert outs[rows].stats.hits == outs[100_000].stats.hits
    reasons = outs[7].stats.reasons
    assert reasons.keys() == {"contaminated", "in_earlier_version", "exact_duplicate", "near_duplicate"}
    assert outs[7].stats.clusters == outs[7].kept.height
    # kept + rejected = input, rejected rows in input row order
    rejected = outs[7].rejected
    assert outs[7].kept.height + rejected.height == problems.height
    order = {i: k for k, i in enumerate(problems["id"])}
    assert [order[i] for i in rejected["id"]] == sorted(order[i] for i in rejected["id"])


def _long_text(rng: random.Random) -> str:
    return " ".join(_text(rng) for _ in range(2))


def test_a_long_lsh_run_links_to_its_first_alive_row_as_the_pair_rule_does():
    """80 near-copies share LSH buckets (runs longer than the pair rule's 64); the first two also hold a benchmark
    item's 13-gram, so they leave first, and three are exact copies. The rest cluster as today's rule over the alive rows clusters them."""
    rng = random.Random(5)
    big, phrase = _long_text(rng), " ".join(f"leak{i}" for i in range(13))
    texts = [f"{big} {phrase}", f"{phrase} {big}"] + [f"{big} {n}" for n in range(78)] + [_edit(big, rng)] * 3
    texts += [_long_text(rng) for _ in range(10)]
    bench = pl.DataFrame({"source": "bench", "source_id": ["0"], "problem": [f"{phrase} {_long_text(rng)}"]})
    params = dedup.Params.from_config(DedupConfig())
    result = dedup.dedup(_frame(texts), bench, params, _NoEarlier(), plan=shards.in_memory(16)).result
    ids = _frame(texts)["id"].to_list()
    got = {r["id"]: (r["reject_reason"], r["dup_of"]) for r in result.rejected.iter_rows(named=True)}
    assert {i for i, (reason, _) in got.items() if reason == "contaminated"} == set(ids[:2])
    # today's rule on the alive rows: exact copies keep their first row, then components of the LSH pairs
    alive = [i for i in range(len(texts)) if ids[i] not in got or got[ids[i]][0] != "contaminated"]
    first: dict[str, int] = {}
    exact = {i: first.setdefault(k, i) for i, k in zip(alive, dedup.exact_keys([texts[i] for i in alive]))}
    live = [i for i in alive if exact[i] == i]
    sigs = minhash.signatures([texts[i] for i in live], num_perm=params.num_perm)
    keys = minhash.band_keys(sigs, params.bands, params.rows)
    assert max(np.unique(keys[:, b], return_counts=True)[1].max() for b in range(params.bands)) > 64
    rep = dedup._clusters(sigs, params.bands, params.rows, params.threshold)
    expected = {ids[i]: ("exact_duplicate", ids[f]) for i, f in exact.items() if i != f}
    expected |= {ids[live[k]]: ("near_duplicate", ids[live[r]]) for k, r in enumerate(rep) if k != r}
    assert {i: v for i, v in got.items() if v[0] != "contaminated"} == expected and len(expected) >= 70


def test_an_unsorted_partition_file_is_refused_naming_it():
    problems, bench, _ = _corpus()
    params = dedup.Params.from_config(DedupConfig())
    with shards.scratch_plan(shard_rows=50) as plan:
        source = plan.folder / "input.parquet"
        store.write_parquet(problems, source)
        dedup.run_phases(source, problems.height, bench, params, _NoEarlier(), plan=plan)
        label = shards.rows_label("dedup", 50, 100)
        path = dedup_shards.part_path(plan.folder, 1, label)
        recs = np.load(path)
        np.save(path, recs[::-1])
        for later in ("dedup-part-", "dedup-verdicts-", "dedup-out-"):  # redo the phases after (a)
            for marker in plan.folder.glob(f"{later}*.done.json"):
                marker.unlink()
        with pytest.raises(dedup_partitions.UnsortedRecordsError) as refused:
            dedup.run_phases(source, problems.height, bench, params, _NoEarlier(), plan=plan)
    assert str(path) in str(refused.value) and f"delete it to redo shard {label}" in str(refused.value)
    assert "not sorted by (band, key, doc) at record" in str(refused.value)


class _Killed(RuntimeError):
    pass


class _KilledAfter(LocalExecutor):
    """The local engine, killed once `after` items of the work `name` have finished."""

    def __init__(self, name: str, after: int):
        super().__init__()
        self.work, self.after = name, after

    def map(self, fn, items, *, name, shared=None):
        for done, result in enumerate(super().map(fn, items, name=name, shared=shared), start=1):
            yield result
            if name == self.work and done == self.after:
                raise _Killed(f"killed in {name}")


@pytest.mark.parametrize("work", [dedup_shards.SIGNATURES, dedup_partitions.PARTITIONS])
def test_a_killed_run_redoes_only_the_unfinished_tasks_of_its_phase(tmp_path, shared_data, work):
    pull_config = PullConfig(seed=5, sources=[HubSource(id="openai/gsm8k", limit=1200,
                                                        data_files=str(shared_data / "gsm8k" / "train.jsonl"))])
    config = DedupConfig(eval_sets=[HubSource(id="openai/gsm8k", split="test",
                                              data_files=str(shared_data / "gsm8k" / "test.jsonl"))])
    runs = {}
    for name in ("whole", "killed"):
        runs[name] = run = tmp_path / name / "v1"
        pull.run(run, pull_config)
    dedup.run(runs["whole"], config, shard_rows=300)
    with pytest.raises(_Killed):
        dedup.run(runs["killed"], config, shard_rows=300, executor=_KilledAfter(work, 2))
    dedup.run(runs["killed"], config, shard_rows=300)
    record = json.loads((runs["killed"] / "dedup" / shards.RECORD).read_text())["work"]
    assert len(record[work]["reused"]) == 2 and len(record[work]["computed"]) == 2  # 4 shards or partitions
    if work == dedup_partitions.PARTITIONS:
        assert record[dedup_shards.SIGNATURES] == {"computed": [], "reused": sorted(
            shards.rows_label("dedup", lo, hi) for lo, hi in shards.row_ranges(1200, 300))}
    for name in (store.DATA, store.REJECTED):
        assert (runs["killed"] / "dedup" / name).read_bytes() == (runs["whole"] / "dedup" / name).read_bytes()
    assert (tmp_path / "killed" / "dedup-index" / "v1.parquet").read_bytes() == \
        (tmp_path / "whole" / "dedup-index" / "v1.parquet").read_bytes()


def test_stage_outputs_are_the_same_bytes_whatever_the_shard_size(tmp_path, shared_data):
    pull_config = PullConfig(seed=5, sources=[HubSource(id="openai/gsm8k", limit=1200,
                                                        data_files=str(shared_data / "gsm8k" / "train.jsonl"))])
    config = DedupConfig(eval_sets=[HubSource(id="openai/gsm8k", split="test",
                                              data_files=str(shared_data / "gsm8k" / "test.jsonl"))])
    outputs = {}
    for rows in (250, 5000):
        run = tmp_path / str(rows) / "v1"
        pull.run(run, pull_config)
        dedup.run(run, config, shard_rows=rows)
        outputs[rows] = [(run / "dedup" / name).read_bytes() for name in (store.DATA, store.REJECTED)]
        outputs[rows].append((tmp_path / str(rows) / "dedup-index" / "v1.parquet").read_bytes())
    assert outputs[250] == outputs[5000]
