"""The filter stage's work as tasks over files, so that no process holds the whole trace table.

1. `check_shard`, per row shard of the generate output: the per-trace checks, then one
   partition file of what the cross-row work needs, its row groups by `hash(problem_id) % P`.
2. `cross_rows`, per partition of problem ids: pass rates, near-identical traces of one
   problem, the judge, best-of-N; a file of final verdicts, its row groups by row shard.
3. `write_shard`, per row shard: its rows read again with their checks' and their
   partitions' verdicts; kept and rejected tables.
4. `pass_rates`, per chunk of the dedup output: its problems' pass rates, in its order.

Each task reads its own input (`store.read_rows`) and writes its own output; the driver
(`curation.filters`) passes file names, offsets and counts only. A shuffle file holds one
row group per destination, its sizes in the task's counts, so a reader takes its slice by
offset (datatrove's per-band files, with row groups in place of one file per destination).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from curation import answers, checks, minhash
from curation.checks import FilterReason
from curation.dedup import trace_clusters_of
from curation.judge import Judge
from curation.teacher import Usage, cost
from curation.teacher.cache import RequestCache
from machinery import shards, store
from machinery.config import FilterConfig, JudgeConfig

TRACE_SHINGLE, TRACE_PERM = 5, 128  # near-identical traces: MinHash as `dedup.trace_clusters` defaults
HASH_SEED = 31  # polars' hash of a problem id picks its partition: fixed, so every task agrees
VERDICTS = pl.Schema({"reject_reason": pl.String, "reject_detail": pl.String})
RATES = pl.Schema({"problem_id": pl.String, "samples": pl.Int32, "correct": pl.Int32})
FINAL = pl.Schema({"row": pl.Int64, **VERDICTS, "pass_rate": pl.Float64})
JUDGE_TEXTS = ("problem", "completion", "answer")


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """What every task of one filter run reads: its two input files, where its own files go, P."""

    generations: Path
    problems: Path
    folder: Path  # the stage key's shard folder: the shuffle files lie beside the shard tables
    partitions: int
    judged: bool  # whether the partition files carry the judge's texts


@dataclass(frozen=True, kw_only=True)
class JudgeRecipe:
    """How a task in another process builds its own judge (as `generate.Recipe` builds a teacher).

    The key travels with the task (Ray's object store), never into files, logs or stats.
    """

    config: JudgeConfig
    api_key: str | None = field(repr=False)
    folder: Path  # filter/: the task appends to judge-<label>.jsonl and reads every judge*.jsonl


def judge_cache_files(folder: Path) -> list[Path]:
    """Every judge request cache of a filter folder: this process's and the partition tasks'."""
    return sorted(folder.glob("judge*.jsonl"))


def partition_count(traces: int, per_partition: int) -> int:
    """P: enough partitions that each holds about `per_partition` traces (at least one)."""
    return max(1, -(-traces // max(1, per_partition)))


def partition_file(folder: Path, label: str) -> Path:
    """A check shard's partition file."""
    return folder / f"{label}.partitions.parquet"


def final_file(folder: Path, label: str) -> Path:
    """A partition's file of final verdicts."""
    return folder / f"{label}.final.parquet"


def slices(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) of each group of a shuffle file whose row groups hold `sizes` rows."""
    stops = np.cumsum(sizes, dtype=np.int64).tolist()
    return [(stop - size, stop) for size, stop in zip(sizes, stops)]


def write_groups(path: Path, frame: pl.DataFrame, group: pl.Series, groups: int) -> list[int]:
    """Write `frame` stably sorted by `group` (0..groups-1), one row group per group; the sizes."""
    sizes = np.bincount(group.to_numpy(), minlength=groups).tolist() if len(group) else [0] * groups
    table = frame.with_columns(_group=group).sort("_group", maintain_order=True).drop("_group").to_arrow()
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema, compression="lz4", write_statistics=False) as writer:
        offset = 0
        for size in sizes:
            if size:
                writer.write_table(table.slice(offset, size), row_group_size=size)
                offset += size
    store.atomic_write_bytes(path, buffer.getvalue())
    return sizes


def read_groups(pieces: Sequence[tuple[Path, int, int]], schema: pl.Schema) -> pl.DataFrame:
    """The rows [start, stop) of each (file, start, stop), stacked; `schema` when there are none."""
    frames = [store.read_rows(path, start, stop) for path, start, stop in pieces if stop > start]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)


def joined(inputs: Inputs, start: int, stop: int, columns: Sequence[str]) -> pl.DataFrame:
    """Generate rows [start, stop) with `columns` of their problems (null for an unknown id)."""
    frame = store.read_rows(inputs.generations, start, stop)
    ids = frame["problem_id"].unique().implode()
    problems = (pl.scan_parquet(inputs.problems).select(pl.col("id").alias("problem_id"), *columns)
                .filter(pl.col("problem_id").is_in(ids)).collect())
    return frame.join(problems, on="problem_id", how="left", maintain_order="left")


# --- phase 1: per row shard, the per-trace checks --------------------------------------------------


def check_rows(frame: pl.DataFrame, *, config: FilterConfig, workers: int
               ) -> tuple[pl.DataFrame, np.ndarray, dict[str, int]]:
    """One shard's per-trace checks: tokens, truncation, then `checks.CHECKS`.

    Returns the row-aligned table (tokens, reject_reason, reject_detail, pred), the MinHash
    signatures of the survivors (in row order) and the verifier's counts. The CPU of the
    stage (step checker, math-verify in a pool of `workers` processes).
    """
    tokens = [checks.token_count(t, r) for t, r in frame.select("completion", "completion_tokens").iter_rows()]
    # Filter-only: Tunix's rewards and the eval see no finish reason, so truncation is not in `checks.CHECKS`.
    verdicts: list[checks.Failure | None] = [
        checks.Failure(FilterReason.TRUNCATED, "the teacher hit max_new_tokens") if finish == "length" else None
        for finish in frame["finish_reason"]]
    pending = [i for i, v in enumerate(verdicts) if v is None]
    sub = frame[pending]
    rows = checks.rows_of(sub["completion"].to_list(), sub["answer"].to_list(), sub["source"].to_list(),
                          sub["meta"].to_list(), [tokens[i] for i in pending])
    context = checks.Context(config=config, deadline_s=config.check_deadline_s, workers=workers)
    for i, failure in zip(pending, checks.first_failures(rows, context)):
        verdicts[i] = failure
    table = with_verdicts(pl.DataFrame({"tokens": pl.Series(tokens, dtype=pl.Int32)}), verdicts).with_columns(
        pred=pl.Series([answers.extract(t) for t in frame["completion"]], dtype=pl.String))
    alive = [i for i, v in enumerate(verdicts) if v is None]
    sigs = minhash.signatures(frame["completion"].gather(alive).to_list(), shingle=TRACE_SHINGLE, num_perm=TRACE_PERM)
    return table, sigs, context.counts


def check_shard(item: tuple[str, int, int], *, inputs: Inputs, config: FilterConfig, workers: int
                ) -> shards.ShardOutput:
    """Phase 1 for the shard `label` of rows [start, stop): checks, then the partition file for phase 2."""
    label, start, stop = item
    frame = joined(inputs, start, stop, ["answer", "source", "meta", *(["problem"] if inputs.judged else [])])
    table, sigs, counts = check_rows(frame, config=config, workers=workers)
    alive = table["reject_reason"].is_null()
    keys = frame.select(row=pl.int_range(start, stop, dtype=pl.Int64), problem_id="problem_id",
                        sample_idx="sample_idx").with_columns(tokens=table["tokens"], alive=alive)
    survivors = pl.DataFrame({"row": keys["row"].filter(alive),
                              "sig": pl.Series(sigs, dtype=pl.Array(pl.UInt32, TRACE_PERM))})
    keys = keys.join(survivors, on="row", how="left", maintain_order="left")
    if inputs.judged:  # the judge reads only survivors: the others' texts stay behind
        keys = keys.with_columns(frame.select(JUDGE_TEXTS)).with_columns(
            pl.when(pl.col("alive")).then(pl.col(name)).alias(name) for name in JUDGE_TEXTS)
    part = (keys["problem_id"].hash(HASH_SEED) % inputs.partitions).cast(pl.Int64)
    sizes = write_groups(partition_file(inputs.folder, label), keys, part, inputs.partitions)
    return shards.ShardOutput(tables={"rows": table}, counts={"audit": counts, "partitions": sizes})


# --- phase 2: per partition of problem ids, the cross-row work -------------------------------------


def with_verdicts(frame: pl.DataFrame, verdicts: Sequence[checks.Failure | None]) -> pl.DataFrame:
    """The frame with `reject_reason` and `reject_detail` from per-row verdicts (None: kept so far)."""
    return frame.with_columns(
        reject_reason=pl.Series([v.reason.value if v else None for v in verdicts], dtype=pl.String),
        reject_detail=pl.Series([v.detail if v else None for v in verdicts], dtype=pl.String))


def near_duplicates(alive: pl.DataFrame, threshold: float) -> dict[int, checks.Failure]:
    """Among each problem's surviving traces (rows in order), all but the first of near-identical ones."""
    if alive.is_empty():
        return {}
    sigs = np.ascontiguousarray(alive["sig"].to_numpy()).reshape(-1, TRACE_PERM)
    reps = trace_clusters_of(alive["problem_id"].to_list(), sigs, threshold=threshold)
    rows, samples = alive["row"].to_list(), alive["sample_idx"].to_list()
    return {rows[i]: checks.Failure(FilterReason.NEAR_DUPLICATE_TRACE, f"near-identical to sample {samples[rep]}")
            for i, rep in enumerate(reps) if rep != i}


def judged(alive: pl.DataFrame, judge: Judge) -> dict[int, checks.Failure]:
    """The surviving traces the judge calls unsound (or could not judge)."""
    if alive.is_empty():
        return {}
    said = judge.judge(alive["problem"].to_list(), alive["completion"].to_list(), alive["answer"].to_list())
    found = {}
    for row, verdict in zip(alive["row"].to_list(), said):
        if verdict.sound is None:
            found[row] = checks.Failure(FilterReason.UNJUDGED, f"the judge did not answer: {verdict.reason}")
        elif not verdict.sound:
            found[row] = checks.Failure(FilterReason.JUDGE_REJECTED, verdict.reason)
    return found


def best_of_n(alive: pl.DataFrame, keep: int) -> dict[int, checks.Failure]:
    """Beyond the `keep` shortest surviving traces of each problem: surplus."""
    ranked = alive.sort("tokens", "sample_idx", "row").with_columns(rank=pl.int_range(pl.len()).over("problem_id"))
    failure = checks.Failure(FilterReason.BEST_OF_N_SURPLUS, f"correct, but {keep} shorter traces were kept")
    return dict.fromkeys(ranked.filter(pl.col("rank") >= keep)["row"].to_list(), failure)


def cross_verdicts(table: pl.DataFrame, config: FilterConfig, judge: Judge | None) -> dict[int, checks.Failure]:
    """A partition's verdicts after the checks, by row: near-identical traces, the judge, best-of-N, in order."""
    found: dict[int, checks.Failure] = {}
    steps = [lambda alive: near_duplicates(alive, config.similar_threshold)]
    if judge is not None:
        steps.append(lambda alive: judged(alive, judge))
    steps.append(lambda alive: best_of_n(alive, config.keep_per_problem))
    for step in steps:
        found |= step(still_alive(table, found))
    return found


def still_alive(table: pl.DataFrame, found: dict[int, checks.Failure]) -> pl.DataFrame:
    """The rows of a partition that passed the checks and have no verdict in `found` yet."""
    gone = pl.Series(list(found), dtype=pl.Int64).implode()
    return table.filter(pl.col("alive") & ~pl.col("row").is_in(gone))


def _judge_of(label: str, judge: Judge | None, recipe: JudgeRecipe | None) -> tuple[Judge | None, RequestCache | None]:
    """This task's judge: the one given (this process), or one made from `recipe` with its own cache file."""
    if judge is not None or recipe is None:
        return judge, None
    cache = RequestCache(recipe.folder / f"judge-{label}.jsonl", read_also=judge_cache_files(recipe.folder))
    return Judge(recipe.config, api_key=recipe.api_key, cache=cache, progress=False), cache


def judge_bill(judge: Judge) -> dict[str, float]:
    """A judge's running totals, without dollars (priced once, from the summed tokens)."""
    return {name: value for name, value in judge.figures().items() if name != "cost_usd"}


def cross_rows(item: tuple[str, list[tuple[Path, int, int]]], *, inputs: Inputs, config: FilterConfig,
               starts: list[int], judge: Judge | None = None, recipe: JudgeRecipe | None = None
               ) -> shards.ShardOutput:
    """Phase 2 for the partition `label`, from its slices of the partition files: pass rates, verdicts."""
    label, pieces = item
    table = read_groups(pieces, _partition_schema(inputs.judged))
    rows = table["row"].to_numpy()
    if len(rows) > 1 and not (np.diff(rows) > 0).all():
        raise RuntimeError(f"{label}: rows of {', '.join(str(p) for p, _, _ in pieces)} are not in increasing "
                           f"order (a partition file written by another run?); delete the shard folder")
    rates = (table.group_by("problem_id").agg(samples=pl.len().cast(pl.Int32),
                                              correct=pl.col("alive").sum().cast(pl.Int32)).sort("problem_id"))
    asking, cache = _judge_of(label, judge, recipe)
    before = judge_bill(asking) if asking is not None else {}
    try:
        found = cross_verdicts(table, config, asking)
    finally:
        if cache is not None:
            cache.close()
    bill = {k: v - before.get(k, 0) for k, v in judge_bill(asking).items()} if asking is not None else {}
    final = (with_verdicts(table.select("row", "problem_id"), [found.get(r) for r in rows.tolist()])
             .join(rates.select("problem_id", pass_rate=pl.col("correct") / pl.col("samples")), on="problem_id",
                   how="left", maintain_order="left").drop("problem_id"))
    shard = pl.Series(np.searchsorted(np.asarray(starts, dtype=np.int64), rows, side="right") - 1)
    sizes = write_groups(final_file(inputs.folder, label), final, shard, len(starts))
    kept = still_alive(table, found)["problem_id"].n_unique()
    return shards.ShardOutput(tables={"rates": rates}, counts={"shards": sizes, "problems_kept": kept, "judge": bill})


def _partition_schema(judged: bool) -> pl.Schema:
    """The columns of a partition file (for a partition no shard wrote to)."""
    base = {"row": pl.Int64, "problem_id": pl.String, "sample_idx": pl.Int32, "tokens": pl.Int32,
            "alive": pl.Boolean, "sig": pl.Array(pl.UInt32, TRACE_PERM)}
    return pl.Schema({**base, **(dict.fromkeys(JUDGE_TEXTS, pl.String) if judged else {})})


# --- phase 3: per row shard, the kept and rejected rows --------------------------------------------


def write_shard(item: tuple[str, int, int, Path, list[tuple[Path, int, int]]], *, inputs: Inputs
                ) -> shards.ShardOutput:
    """Phase 3 for rows [start, stop): the rows with their final verdicts, as kept and rejected tables."""
    label, start, stop, checked_path, pieces = item
    frame = joined(inputs, start, stop, ["source", "answer", "meta"])
    checked = pl.read_parquet(checked_path)
    final = read_groups(pieces, FINAL).sort("row")
    if final["row"].to_list() != list(range(start, stop)):
        raise RuntimeError(f"{label}: the final verdicts of rows {start}..{stop} do not cover them exactly "
                           f"({final.height} rows from {len(pieces)} partition files); delete the shard folder")
    frame = frame.with_columns(checked["tokens"]).with_columns(
        reject_reason=checked["reject_reason"].fill_null(final["reject_reason"]),
        reject_detail=pl.when(checked["reject_reason"].is_null()).then(final["reject_detail"])
        .otherwise(checked["reject_detail"])).with_columns(checked["pred"], pass_rate=final["pass_rate"])
    kept = frame.filter(pl.col("reject_reason").is_null()).drop("reject_reason", "reject_detail")
    rejected = frame.filter(pl.col("reject_reason").is_not_null()).drop("pass_rate")
    return shards.ShardOutput(tables={"kept": kept, "rejected": rejected},
                              counts={"kept": kept.height, "rejected": rejected.height,
                                      "reasons": store.reason_counts(rejected), "examples": examples(rejected)})


def examples(rejected: pl.DataFrame, per_reason: int = 2, chars: int = 300) -> dict[str, list[dict[str, str]]]:
    """Up to `per_reason` rejected traces per reason (first by problem and sample), with their evidence."""
    found: dict[str, list[dict[str, str]]] = {}
    ordered = rejected.sort("reject_reason", "problem_id", "sample_idx")
    for row in ordered.select("reject_reason", "problem_id", "sample_idx", "reject_detail",
                              "completion").iter_rows(named=True):
        chosen = found.setdefault(row["reject_reason"], [])
        if len(chosen) < per_reason:
            text = row["completion"] or ""
            chosen.append({"problem_id": row["problem_id"], "sample_idx": str(row["sample_idx"]),
                           "detail": row["reject_detail"] or "",
                           "excerpt": text if len(text) <= chars else text[: chars - 1] + "…"})
    return found


def first_examples(candidates: Sequence[dict[str, list[dict[str, str]]]], per_reason: int = 2
                   ) -> dict[str, list[dict[str, str]]]:
    """The first `per_reason` examples of each reason among every shard's first ones."""
    merged: dict[str, list[dict[str, str]]] = {}
    for found in candidates:
        for reason, shown in found.items():
            merged.setdefault(reason, []).extend(shown)
    return {reason: sorted(shown, key=lambda e: (e["problem_id"], int(e["sample_idx"])))[:per_reason]
            for reason, shown in sorted(merged.items())}


# --- phase 4: per chunk of problems, pass rates in the dedup output's order ------------------------


def pass_rates(rows: tuple[int, int], *, inputs: Inputs, rates: list[Path]) -> shards.ShardOutput:
    """Phase 4 for problems [start, stop): samples, correct ones, their ratio; the histogram's counts."""
    start, stop = rows
    ids = store.read_rows(inputs.problems, start, stop, columns=["id"]).rename({"id": "problem_id"})
    found = pl.scan_parquet(rates).filter(pl.col("problem_id").is_in(ids["problem_id"].implode())).collect()
    table = (ids.join(found, on="problem_id", how="left", maintain_order="left")
             .with_columns(pl.col("samples").fill_null(0), pl.col("correct").fill_null(0))
             .with_columns(pass_rate=pl.when(pl.col("samples") > 0)
                           .then(pl.col("correct") / pl.col("samples")).otherwise(None)))
    rated = table.filter(pl.col("samples") > 0)
    # Correct answers summed per sample count: the mean over all chunks is then exact (see `mean_rate`).
    by_samples = rated.group_by("samples").agg(pl.col("correct").sum()).sort("samples")
    return shards.ShardOutput(tables={"pass_rates": table},
                              counts={"histogram": histogram(table["pass_rate"].drop_nulls()),
                                      "correct_by_samples": {str(s): int(c) for s, c in by_samples.iter_rows()}})


def mean_rate(correct_by_samples: Sequence[dict[str, int]], rated: int) -> float:
    """The mean pass rate of `rated` problems from each chunk's correct answers per sample count."""
    total = sum((Fraction(c, int(s)) for counts in correct_by_samples for s, c in counts.items()), Fraction(0))
    return round(float(total / rated), 4) if rated else 0.0


def histogram(rates: pl.Series) -> dict[str, int]:
    """Problems per pass-rate bucket: 0, (0, .25], ..., 1."""
    buckets = {"0": 0, "0-0.25": 0, "0.25-0.5": 0, "0.5-0.75": 0, "0.75-1": 0, "1": 0}
    for rate in rates.to_list():
        key = ("0" if rate == 0 else "1" if rate == 1 else "0-0.25" if rate <= 0.25 else "0.25-0.5"
               if rate <= 0.5 else "0.5-0.75" if rate <= 0.75 else "0.75-1")
        buckets[key] += 1
    return buckets


def summed(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Numeric figures added up by name, names sorted."""
    total: dict[str, Any] = {}
    for record in records:
        for name, value in record.items():
            total[name] = total.get(name, 0) + value
    return dict(sorted(total.items()))


def judge_figures(bills: Sequence[dict[str, float]], price: tuple[float, float] | None) -> dict[str, float]:
    """The judge's bill of this run (`Judge.figures` shape) from the partitions it asked."""
    total = {**Usage().figures(), "from_cache": 0, "seconds": 0.0, **summed(bills)}
    total["seconds"] = round(total["seconds"], 3)
    dollars = cost(total["prompt_tokens"], total["completion_tokens"], price)
    return {**total, **({"cost_usd": dollars} if dollars is not None else {})}

