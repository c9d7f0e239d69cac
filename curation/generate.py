"""The generate stage: every problem -> n teacher samples, as rows of the generations table.

A request that still fails after its retries is a rejected row with its error, never an
exception that loses the batch. Finished samples live in `generate/requests.jsonl`, so a
killed run resumes without asking the teacher again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import polars as pl

from curation import store
from curation.config import TeacherConfig
from curation.teacher import Completion, SamplingParams, Teacher, prompts
from curation.teacher.cache import RequestCache

logger = logging.getLogger(__name__)

STAGE = "generate"
INPUT_STAGE = "dedup"
CACHE_FILE = "requests.jsonl"

GENERATION_SCHEMA = pl.Schema({
    "problem_id": pl.String, "sample_idx": pl.Int32, "teacher": pl.String, "prompt": pl.String,
    "completion": pl.String, "finish_reason": pl.String, "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32, "latency_s": pl.Float64, "attempts": pl.Int32, "cached": pl.Boolean,
    "error": pl.String,
})


class GenerateReason(StrEnum):
    """Why a requested sample is not a generation."""

    TEACHER_ERROR = "teacher_error"  # the request still failed after its retries; the next run asks again


@dataclass(kw_only=True)
class GenerateStats(store.StageStats):
    """Teacher figures for the data card."""

    teacher: str = ""
    samples_per_problem: int = 0
    from_cache: int = 0
    requests_sent: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0


def sampling_params(config: TeacherConfig) -> SamplingParams:
    """The sampling parameters of a teacher config."""
    return SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p,
                          max_new_tokens=config.max_new_tokens)


def make_teacher(config: TeacherConfig, cache: RequestCache | None, *, api_key: str | None = None,
                 seed: int = 0) -> Teacher:
    """The configured teacher backend; `api_key` is the resolved key value (never stored or logged)."""
    if config.backend == "openai":
        from curation.teacher.openai_compat import OpenAITeacher, RetryPolicy

        if not config.base_url:
            raise ValueError("teacher.backend=openai needs teacher.base_url, e.g. http://127.0.0.1:8000/v1")
        return OpenAITeacher(base_url=config.base_url, model=config.model, api_key=api_key, style=config.style,
                             concurrency=config.concurrency, timeout_s=config.timeout_s,
                             retry=RetryPolicy(max_attempts=config.max_attempts), native_n=config.native_n,
                             cache=cache, seed=seed)
    from curation.teacher.tunix_local import TunixTeacher
    from models import registry

    return TunixTeacher(registry.load(config.model, seed=seed, revision=config.revision), batch_size=config.concurrency,
                        cache=cache, seed=seed)


def generate(problems: pl.DataFrame, teacher: Teacher, config: TeacherConfig) -> store.StageResult:
    """Ask the teacher for n samples of every problem; errors become rejected rows."""
    started = time.time()
    built = [prompts.build(problem, source) for problem, source in problems.select("problem", "source").iter_rows()]
    params = sampling_params(config)
    completions = teacher.generate(built, params)
    ids = problems["id"].to_list()
    chat = config.style == "chat" and config.backend == "openai"  # the Tunix teacher always completes text
    shown = [json.dumps(list(p.messages), ensure_ascii=False) if chat else p.text for p in built]
    frame = pl.DataFrame([_row(c, ids, shown, teacher.name) for c in completions], schema=GENERATION_SCHEMA,
                         orient="row")
    kept = frame.filter(pl.col("error").is_null())
    rejected = frame.filter(pl.col("error").is_not_null()).with_columns(
        reject_reason=pl.lit(GenerateReason.TEACHER_ERROR.value), reject_detail=pl.col("error"))
    elapsed = time.time() - started
    tokens = int(kept["completion_tokens"].fill_null(0).sum())
    stats = GenerateStats(rows_in=frame.height, kept=kept.height, rejected=rejected.height,
                          reasons=store.reason_counts(rejected), seconds=round(elapsed, 3), teacher=teacher.name,
                          samples_per_problem=config.n, from_cache=int(frame["cached"].sum()),
                          requests_sent=getattr(teacher, "requests_sent", 0), completion_tokens=tokens,
                          tokens_per_s=round(tokens / max(elapsed, 1e-9), 1))
    return store.StageResult(kept=kept, rejected=rejected, stats=stats)


def _row(c: Completion, ids: list[str], shown: list[str], teacher: str) -> dict[str, object]:
    return {"problem_id": ids[c.prompt_idx], "sample_idx": c.sample_idx, "teacher": teacher,
            "prompt": shown[c.prompt_idx], "completion": c.text, "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "latency_s": round(c.latency_s, 4), "attempts": c.attempts, "cached": c.cached, "error": c.error}


def run(run_dir: Path, config: TeacherConfig, *, seed: int = 0, force: bool = False, api_key: str | None = None,
        teacher: Teacher | None = None) -> store.Manifest:
    """Run the generate stage on the dedup output of `run_dir`, resuming from the request cache.

    `api_key` is the endpoint's key, resolved by the caller (flows/: a Prefect Secret block or
    the environment); `teacher` replaces the configured backend (tests).
    """
    dedup = store.finished(run_dir, INPUT_STAGE)
    problems = dedup.read()
    stage_config = {**config.model_dump(mode="json", exclude={"concurrency", "timeout_s", "max_attempts"}),
                    "template": prompts.template_version(), "seed": seed}
    inputs = {INPUT_STAGE: dedup.hash()}
    if config.backend == "tunix" and teacher is None:  # a Hub teacher: the commit its revision resolves to
        from models import registry

        inputs["teacher"] = registry.identity(config.model, revision=config.revision)

    def compute() -> store.StageResult:
        cache = RequestCache(run_dir / STAGE / CACHE_FILE)
        try:
            return generate(problems, teacher or make_teacher(config, cache, api_key=api_key, seed=seed), config)
        finally:
            cache.close()

    previous = store.complete_manifest(run_dir / STAGE)
    if previous is not None and previous.counts["rejected"] and not force:
        # Failed samples are not a final answer: ask again (finished ones come from the cache).
        logger.info("generate: retrying %d samples that failed last time", previous.counts["rejected"])
        force = True
    return store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, compute=compute, force=force)
