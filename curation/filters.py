"""The filter stage: keep traces in the right format that reach the verified answer.

Checks run cheapest first and a trace leaves at its first failure, with that reason:
truncated, bad format, too short/long, repetitive, wrong language, wrong answer (or
unverifiable in time). Of the correct traces of one problem, near-identical ones are
dropped and at most `keep_per_problem` of the shortest stay (best-of-N). Every problem's
pass rate (correct / samples) goes to `pass_rates.parquet` for the GRPO set's difficulty.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import polars as pl

from curation import answers, store, verifier
from curation.config import FilterConfig
from curation.dedup import trace_clusters

logger = logging.getLogger(__name__)

STAGE = "filter"
INPUT_STAGES = ("generate", "dedup")
_WORD = re.compile(r"\S+")


class FilterReason(StrEnum):
    """Why a trace was dropped."""

    TRUNCATED = "truncated"
    BAD_FORMAT = "bad_format"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    REPETITIVE = "repetitive"
    WRONG_LANGUAGE = "wrong_language"
    WRONG_ANSWER = "wrong_answer"
    UNVERIFIABLE = "unverifiable"
    NEAR_DUPLICATE_TRACE = "near_duplicate_trace"
    BEST_OF_N_SURPLUS = "best_of_n_surplus"


@dataclass(kw_only=True)
class FilterStats(store.StageStats):
    """Filter figures for the data card."""

    problems: int = 0
    problems_with_a_trace: int = 0
    mean_pass_rate: float = 0.0
    pass_rate_histogram: dict[str, int] = field(default_factory=dict)


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one: near 1 for a degenerate loop."""
    words = _WORD.findall(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 20:  # too short to call a loop
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def latin_share(text: str) -> float:
    """Share of letters that are Latin script (English traces are ~1.0; LaTeX stays Latin)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    return sum("LATIN" in unicodedata.name(c, "") for c in letters) / len(letters)


def token_count(text: str, reported: int | None) -> int:
    """The teacher's token count, or ~4 characters a token where the server reported none."""
    return reported if reported is not None else max(1, len(text) // 4)


def first_failure(text: str, finish_reason: str | None, tokens: int, config: FilterConfig
                  ) -> tuple[FilterReason, str] | None:
    """The first cheap check a trace fails, with a detail, or None."""
    if finish_reason == "length":
        return FilterReason.TRUNCATED, "the teacher hit max_new_tokens"
    problem = answers.format_problem(text)
    if problem:
        return FilterReason.BAD_FORMAT, problem
    if tokens < config.min_tokens:
        return FilterReason.TOO_SHORT, f"{tokens} tokens < {config.min_tokens}"
    if config.max_tokens is not None and tokens > config.max_tokens:
        return FilterReason.TOO_LONG, f"{tokens} tokens > {config.max_tokens}"
    share = repeated_ngram_share(text)
    if share > config.max_repeated_ngram_share:
        return FilterReason.REPETITIVE, f"{share:.0%} of word 4-grams repeat"
    latin = latin_share(text)
    if latin < config.min_latin_share:
        return FilterReason.WRONG_LANGUAGE, f"only {latin:.0%} of letters are Latin script"
    return None


def filter_traces(generations: pl.DataFrame, problems: pl.DataFrame, config: FilterConfig) -> store.StageResult:
    """Split generations into kept traces and rejected ones; compute per-problem pass rates."""
    started = time.time()
    frame = generations.join(problems.select(pl.col("id").alias("problem_id"), "source", "answer", "meta"),
                             on="problem_id", how="left", maintain_order="left")
    frame = frame.with_columns(tokens=pl.Series([token_count(t, r) for t, r in
                                                 frame.select("completion", "completion_tokens").iter_rows()],
                                                dtype=pl.Int32))
    reasons: list[str | None] = []
    details: list[str | None] = []
    for text, finish, tokens in frame.select("completion", "finish_reason", "tokens").iter_rows():
        failure = first_failure(text, finish, tokens, config)
        reasons.append(failure[0].value if failure else None)
        details.append(failure[1] if failure else None)
    # Only traces that passed the cheap checks pay for math-verify.
    pending = [i for i, r in enumerate(reasons) if r is None]
    sub = frame[pending]
    verdict = verifier.verdicts(sub["completion"].to_list(), sub["answer"].to_list(), sub["source"].to_list(),
                                sub["meta"].to_list(), deadline_s=config.check_deadline_s)
    for i, ok in zip(pending, verdict):
        if ok is None:
            reasons[i], details[i] = FilterReason.UNVERIFIABLE.value, "no verdict within the deadline"
        elif not ok:
            pred = answers.extract(frame["completion"][i])
            reasons[i], details[i] = FilterReason.WRONG_ANSWER.value, f"answered {pred!r}, gold {frame['answer'][i]!r}"
    frame = frame.with_columns(reject_reason=pl.Series(reasons, dtype=pl.String),
                               reject_detail=pl.Series(details, dtype=pl.String),
                               pred=pl.Series([answers.extract(t) for t in frame["completion"]], dtype=pl.String))
    pass_rates = _pass_rates(frame, problems)
    frame = _best_of_n(frame, config)
    kept = frame.filter(pl.col("reject_reason").is_null()).drop("reject_reason", "reject_detail")
    kept = kept.join(pass_rates.select("problem_id", "pass_rate"), on="problem_id", how="left",
                     maintain_order="left")
    rejected = frame.filter(pl.col("reject_reason").is_not_null())
    rates = pass_rates["pass_rate"].drop_nulls()
    stats = FilterStats(rows_in=frame.height, kept=kept.height, rejected=rejected.height,
                        reasons=store.reason_counts(rejected), seconds=round(time.time() - started, 3),
                        problems=pass_rates.height, problems_with_a_trace=kept["problem_id"].n_unique(),
                        mean_pass_rate=round(float(rates.mean()), 4) if len(rates) else 0.0,
                        pass_rate_histogram=_histogram(rates))
    return store.StageResult(kept=kept, rejected=rejected, stats=stats, extra={"pass_rates": pass_rates})


def _pass_rates(frame: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """Per problem: samples generated, correct ones, and their ratio (null with no samples)."""
    correct = pl.col("reject_reason").is_null()
    counts = frame.group_by("problem_id").agg(samples=pl.len().cast(pl.Int32), correct=correct.sum().cast(pl.Int32))
    return (problems.select(pl.col("id").alias("problem_id"))
            .join(counts, on="problem_id", how="left", maintain_order="left")
            .with_columns(pl.col("samples").fill_null(0), pl.col("correct").fill_null(0))
            .with_columns(pass_rate=pl.when(pl.col("samples") > 0)
                          .then(pl.col("correct") / pl.col("samples")).otherwise(None)))


def _best_of_n(frame: pl.DataFrame, config: FilterConfig) -> pl.DataFrame:
    """Among each problem's correct traces: drop near-identical ones, keep the k shortest."""
    correct = frame.with_row_index("row").filter(pl.col("reject_reason").is_null())
    if correct.is_empty():
        return frame
    reps = trace_clusters(correct["problem_id"].to_list(), correct["completion"].to_list(),
                          threshold=config.similar_threshold)
    rows = correct["row"].to_list()
    reasons = frame["reject_reason"].to_list()
    details = frame["reject_detail"].to_list()
    for position, rep in enumerate(reps):
        if rep != position:
            reasons[rows[position]] = FilterReason.NEAR_DUPLICATE_TRACE.value
            details[rows[position]] = f"near-identical to sample {correct['sample_idx'][rep]}"
    survivors = correct.filter(pl.Series([rep == i for i, rep in enumerate(reps)]))
    ranked = survivors.sort("tokens", "sample_idx").with_columns(rank=pl.int_range(pl.len()).over("problem_id"))
    for row, rank in ranked.filter(pl.col("rank") >= config.keep_per_problem).select("row", "rank").iter_rows():
        reasons[row] = FilterReason.BEST_OF_N_SURPLUS.value
        details[row] = f"correct, but {config.keep_per_problem} shorter traces were kept"
    return frame.with_columns(reject_reason=pl.Series(reasons, dtype=pl.String),
                              reject_detail=pl.Series(details, dtype=pl.String))


def _histogram(rates: pl.Series) -> dict[str, int]:
    """Problems per pass-rate bucket: 0, (0, .25], ..., 1."""
    buckets = {"0": 0, "0-0.25": 0, "0.25-0.5": 0, "0.5-0.75": 0, "0.75-1": 0, "1": 0}
    for rate in rates.to_list():
        key = ("0" if rate == 0 else "1" if rate == 1 else "0-0.25" if rate <= 0.25 else "0.25-0.5"
               if rate <= 0.5 else "0.5-0.75" if rate <= 0.75 else "0.75-1")
        buckets[key] += 1
    return buckets


def run(run_dir: Path, config: FilterConfig, *, force: bool = False) -> store.Manifest:
    """Run the filter stage on the generations and problems of `run_dir`."""
    found = {stage: store.finished(run_dir, stage) for stage in INPUT_STAGES}
    inputs = {stage: done.hash() for stage, done in found.items()}
    return store.run_stage(run_dir, STAGE, config=config.model_dump(mode="json"), inputs=inputs, force=force,
                           compute=lambda: filter_traces(found["generate"].read(), found["dedup"].read(), config))
