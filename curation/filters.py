"""The filter stage: keep traces in the right format that reach the verified answer.

Checks run cheapest first and a trace leaves at its first failure, with that reason:
truncated (the teacher's finish reason, known only here), then the single-completion checks
that the GRPO reward and the eval run too (`curation.checks.CHECKS`: bad format, too
short/long, repetitive, wrong language, a false arithmetic step, wrong answer or
unverifiable in time). Every problem's pass rate (traces passing those checks / samples)
goes to `pass_rates.parquet` for the GRPO set's difficulty. The checks that need other rows
or a service are the filter's alone: near-identical traces of one problem are dropped, the
optional LLM judge (`filter.judge`) reads what is left, and at most `keep_per_problem` of
the shortest stay (best-of-N). The stats carry the verifier's audit and two examples of
every reject reason with their evidence, for the data card.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from curation import answers, checks, minhash
from curation.checks import FilterReason
from curation.dedup import trace_clusters_of
from curation.judge import Judge
from curation.teacher.cache import RequestCache
from machinery import shards, stats, store
from machinery.config import FilterConfig
from machinery.execution import Executor

logger = logging.getLogger(__name__)

STAGE = "filter"
INPUT_STAGES = ("generate", "dedup")
JUDGE_CACHE = "judge.jsonl"
CHECKS = "filter.checks"  # the per-trace checks of one row shard, as the executor names the work
TRACE_SHINGLE, TRACE_PERM = 5, 128  # near-identical traces: MinHash as `dedup.trace_clusters` defaults


@dataclass(kw_only=True)
class FilterStats(store.StageStats):
    """Filter figures for the data card."""

    problems: int = 0
    problems_with_a_trace: int = 0
    mean_pass_rate: float = 0.0
    pass_rate_histogram: dict[str, int] = field(default_factory=dict)
    audit: dict[str, int] = field(default_factory=dict)  # verifier.Audit plus the step checker's counts
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # two per reject reason
    judge: dict[str, float] = field(default_factory=dict)  # with filter.judge: its bill (`Judge.figures`)


def check_rows(item: tuple[int, pl.DataFrame], *, config: FilterConfig, workers: int) -> shards.ShardOutput:
    """One row shard's per-trace checks: tokens, truncation, then `checks.CHECKS`, and the survivors' signatures.

    The CPU of the stage (step checker, math-verify in a pool of `workers` processes); what
    comes after needs all traces at once and runs on the gathered result.
    """
    start, frame = item
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
    table = _with_verdicts(pl.DataFrame({"tokens": pl.Series(tokens, dtype=pl.Int32)}), verdicts).with_columns(
        pred=pl.Series([answers.extract(t) for t in frame["completion"]], dtype=pl.String))
    alive = [i for i, v in enumerate(verdicts) if v is None]
    sigs = minhash.signatures(frame["completion"].gather(alive).to_list(), shingle=TRACE_SHINGLE, num_perm=TRACE_PERM)
    survivors = pl.DataFrame({"row": pl.Series([start + i for i in alive], dtype=pl.Int64),
                              "sig": pl.Series(sigs, dtype=pl.Array(pl.UInt32, TRACE_PERM))})
    return shards.ShardOutput(tables={"rows": table, "survivors": survivors}, counts=context.counts)


def filter_traces(generations: pl.DataFrame, problems: pl.DataFrame, config: FilterConfig, *,
                  judge: Judge | None = None, plan: shards.Plan | None = None) -> store.StageResult:
    """Split generations into kept traces and rejected ones; compute per-problem pass rates.

    `plan` says where the per-trace checks run (row shards); by default here, in memory.
    """
    started = time.time()
    plan = plan or shards.in_memory()
    frame = generations.join(problems.select(pl.col("id").alias("problem_id"), "problem", "source", "answer", "meta"),
                             on="problem_id", how="left", maintain_order="left")
    inputs = frame.select("completion", "completion_tokens", "finish_reason", "answer", "source", "meta")
    items = [(label, (start, inputs.slice(start, stop - start))) for label, (start, stop) in
             plan.rows("filter", frame.height)]
    labels = plan.run(check_rows, items, name=CHECKS,
                      shared={"config": config, "workers": plan.executor.task_cpus})
    checked = plan.concat(labels, "rows")
    frame = frame.with_columns(checked["tokens"]).with_columns(checked.select("reject_reason", "reject_detail"))
    frame = frame.with_columns(checked["pred"])
    pass_rates = _pass_rates(frame, problems)
    survivors = plan.concat(labels, "survivors")
    frame = _near_duplicates(frame, config, survivors)
    if judge is not None:
        frame = _judged(frame, judge)
    frame = _best_of_n(frame, config)
    kept = frame.filter(pl.col("reject_reason").is_null()).drop("reject_reason", "reject_detail", "problem")
    kept = kept.join(pass_rates.select("problem_id", "pass_rate"), on="problem_id", how="left",
                     maintain_order="left")
    rejected = frame.filter(pl.col("reject_reason").is_not_null()).drop("problem")
    rates = pass_rates["pass_rate"].drop_nulls()
    audit: dict[str, int] = {}
    for label in labels:
        for name, count in plan.shards.counts(label).items():
            audit[name] = audit.get(name, 0) + count
    record = FilterStats(rows_in=frame.height, kept=kept.height, rejected=rejected.height,
                         reasons=store.reason_counts(rejected), seconds=round(time.time() - started, 3),
                         problems=pass_rates.height, problems_with_a_trace=kept["problem_id"].n_unique(),
                         mean_pass_rate=round(float(rates.mean()), 4) if len(rates) else 0.0,
                         pass_rate_histogram=_histogram(rates), audit=audit, examples=examples(rejected),
                         judge=judge.figures() if judge is not None else {})
    return store.StageResult(kept=kept, rejected=rejected, stats=record, extra={"pass_rates": pass_rates})


def _with_verdicts(frame: pl.DataFrame, verdicts: list[checks.Failure | None]) -> pl.DataFrame:
    """The frame with `reject_reason` and `reject_detail` from per-row verdicts (None: kept so far)."""
    return frame.with_columns(
        reject_reason=pl.Series([v.reason.value if v else None for v in verdicts], dtype=pl.String),
        reject_detail=pl.Series([v.detail if v else None for v in verdicts], dtype=pl.String))


def _verdicts(frame: pl.DataFrame) -> list[checks.Failure | None]:
    """Per-row verdicts of a frame that has them."""
    return [checks.Failure(FilterReason(r), d) if r is not None else None
            for r, d in frame.select("reject_reason", "reject_detail").iter_rows()]


def _pass_rates(frame: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """Per problem: samples generated, correct ones, and their ratio (null with no samples)."""
    correct = pl.col("reject_reason").is_null()
    counts = frame.group_by("problem_id").agg(samples=pl.len().cast(pl.Int32), correct=correct.sum().cast(pl.Int32))
    return (problems.select(pl.col("id").alias("problem_id"))
            .join(counts, on="problem_id", how="left", maintain_order="left")
            .with_columns(pl.col("samples").fill_null(0), pl.col("correct").fill_null(0))
            .with_columns(pass_rate=pl.when(pl.col("samples") > 0)
                          .then(pl.col("correct") / pl.col("samples")).otherwise(None)))


def _near_duplicates(frame: pl.DataFrame, config: FilterConfig, survivors: pl.DataFrame) -> pl.DataFrame:
    """Among each problem's surviving traces, drop all but the first of near-identical ones.

    `survivors`: the row and MinHash signature of every trace that passed the checks.
    """
    alive = frame.with_row_index("row").filter(pl.col("reject_reason").is_null())
    if alive.is_empty():
        return frame
    if survivors["row"].to_list() != alive["row"].to_list():
        raise RuntimeError(f"filter: {survivors.height} signatures for {alive.height} surviving traces")
    sigs = np.ascontiguousarray(survivors["sig"].to_numpy()).reshape(-1, TRACE_PERM)
    reps = trace_clusters_of(alive["problem_id"].to_list(), sigs, threshold=config.similar_threshold)
    verdicts = _verdicts(frame)
    rows, samples = alive["row"].to_list(), alive["sample_idx"].to_list()
    for position, rep in enumerate(reps):
        if rep != position:
            verdicts[rows[position]] = checks.Failure(FilterReason.NEAR_DUPLICATE_TRACE,
                                                     f"near-identical to sample {samples[rep]}")
    return _with_verdicts(frame, verdicts)


def _judged(frame: pl.DataFrame, judge: Judge) -> pl.DataFrame:
    """Send the surviving traces to the judge; reject what it calls unsound (or could not judge)."""
    alive = frame.with_row_index("row").filter(pl.col("reject_reason").is_null())
    said = judge.judge(alive["problem"].to_list(), alive["completion"].to_list(), alive["answer"].to_list())
    verdicts = _verdicts(frame)
    for row, verdict in zip(alive["row"].to_list(), said):
        if verdict.sound is None:
            verdicts[row] = checks.Failure(FilterReason.UNJUDGED, f"the judge did not answer: {verdict.reason}")
        elif not verdict.sound:
            verdicts[row] = checks.Failure(FilterReason.JUDGE_REJECTED, verdict.reason)
    return _with_verdicts(frame, verdicts)


def _best_of_n(frame: pl.DataFrame, config: FilterConfig) -> pl.DataFrame:
    """Keep the k shortest surviving traces per problem; the rest are surplus."""
    ranked = (frame.with_row_index("row").filter(pl.col("reject_reason").is_null()).sort("tokens", "sample_idx")
              .with_columns(rank=pl.int_range(pl.len()).over("problem_id")))
    verdicts = _verdicts(frame)
    for row in ranked.filter(pl.col("rank") >= config.keep_per_problem)["row"].to_list():
        verdicts[row] = checks.Failure(FilterReason.BEST_OF_N_SURPLUS,
                                       f"correct, but {config.keep_per_problem} shorter traces were kept")
    return _with_verdicts(frame, verdicts)


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


def _histogram(rates: pl.Series) -> dict[str, int]:
    """Problems per pass-rate bucket: 0, (0, .25], ..., 1."""
    buckets = {"0": 0, "0-0.25": 0, "0.25-0.5": 0, "0.5-0.75": 0, "0.75-1": 0, "1": 0}
    for rate in rates.to_list():
        key = ("0" if rate == 0 else "1" if rate == 1 else "0-0.25" if rate <= 0.25 else "0.25-0.5"
               if rate <= 0.5 else "0.5-0.75" if rate <= 0.75 else "0.75-1")
        buckets[key] += 1
    return buckets


def run(run_dir: Path, config: FilterConfig, *, force: bool = False, judge_api_key: str | None = None,
        executor: Executor | None = None, shard_rows: int = shards.DEFAULT_SHARD_ROWS) -> store.Manifest:
    """Run the filter stage on the generations and problems of `run_dir`.

    With `filter.judge`, verdicts are cached in `filter/judge.jsonl` (a killed run resumes
    without asking again) and `judge_api_key` is the judge's key, resolved by the caller.
    `executor` runs the per-trace checks of each row shard here or on a Ray cluster; finished
    shards survive a killed run.
    """
    found = {stage: store.finished(run_dir, stage) for stage in INPUT_STAGES}
    inputs = {stage: done.hash() for stage, done in found.items()}

    def compute(plan: shards.Plan) -> store.StageResult:
        if config.judge is None:
            return filter_traces(found["generate"].read(), found["dedup"].read(), config, plan=plan)
        cache = RequestCache(run_dir / STAGE / JUDGE_CACHE)
        try:
            judge = Judge(config.judge, api_key=judge_api_key, cache=cache)
            return filter_traces(found["generate"].read(), found["dedup"].read(), config, judge=judge, plan=plan)
        finally:
            cache.close()

    previous = store.complete_manifest(run_dir / STAGE)
    unjudged = stats.read(run_dir, STAGE, FilterStats).reasons.get(FilterReason.UNJUDGED, 0) \
        if previous is not None else 0
    if unjudged and not force:  # not a final verdict: ask the judge again (answered ones come from its cache)
        logger.info("filter: asking the judge again about %d traces it did not answer last time", unjudged)
        force = True
    # The judge's price changes no verdict: not part of the stage key.
    return shards.run_stage(run_dir, STAGE, config=config.model_dump(mode="json", exclude={"judge": {"price"}}),
                            inputs=inputs, compute=compute,
                            executor=executor, shard_rows=shard_rows, force=force)
