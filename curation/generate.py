"""The generate stage: every problem -> n teacher samples, as rows of the generations table.

A request that still fails after its retries is a rejected row with its error, never an
exception that loses the batch. Finished samples live in `generate/requests.jsonl`, so a
killed run resumes without asking the teacher again. The problems are asked in row shards:
in this process, or one Ray task per shard, each with its own teacher client and its own
cache file `generate/requests-<shard>.jsonl` (every process reads all of them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl

from curation.teacher import Completion, SamplingParams, Teacher, Usage, cost, prompts
from curation.teacher.cache import RequestCache
from curation.teacher.endpoints import Endpoints
from machinery import shards, store
from machinery.config import TeacherConfig
from machinery.execution import Executor, LocalExecutor

logger = logging.getLogger(__name__)

STAGE = "generate"
INPUT_STAGE = "dedup"
CACHE_FILE = "requests.jsonl"
ASK = "generate.ask"  # one row shard's requests, as the executor names the work

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
    # Billed by this run's requests (cache hits apart, a retry answered with a usage included)
    billed_requests: int = 0
    retries: int = 0  # attempts after a request's first, answered or not
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0  # completion tokens billed per second of the stage's wall time
    cost_usd: float | None = None  # with teacher.price: the billed tokens at each endpoint's price
    cpu_s: float | None = None  # the embedded (tunix) teacher: this process's CPU-seconds decoding
    # per endpoint URL: requests, successes, failures, times benched (this run's requests)
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    # per endpoint URL: requests, billed, retries, prompt_tokens, completion_tokens (curation.teacher.Usage)
    endpoint_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    endpoint_cost_usd: dict[str, float] = field(default_factory=dict)  # with teacher.price


def sampling_params(config: TeacherConfig) -> SamplingParams:
    """The sampling parameters of a teacher config."""
    return SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p,
                          max_new_tokens=config.max_new_tokens)


def make_teacher(config: TeacherConfig, cache: RequestCache | None, *, api_key: str | None = None,
                 seed: int = 0, progress: bool = True) -> Teacher:
    """The configured teacher backend; `api_key` is the resolved key value (never stored or logged)."""
    if config.backend == "openai":
        from curation.teacher.openai_compat import OpenAITeacher, RetryPolicy

        if not config.base_url:
            raise ValueError("teacher.backend=openai needs teacher.base_url, e.g. http://127.0.0.1:8000/v1")
        return OpenAITeacher(base_url=config.base_url, model=config.model, api_key=api_key, style=config.style,
                             concurrency=config.concurrency, timeout_s=config.timeout_s,
                             retry=RetryPolicy(max_attempts=config.max_attempts), native_n=config.native_n,
                             cache=cache, seed=seed, progress=progress, bench_after=config.bench_after,
                             bench_s=config.bench_s)
    from curation.teacher.tunix_local import TunixTeacher
    from models import registry

    return TunixTeacher(registry.load(config.model, seed=seed, revision=config.revision), batch_size=config.concurrency,
                        cache=cache, seed=seed, progress=progress)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How a task in another process builds its own teacher: config, resolved key, seed, cache folder.

    The key travels with the task (Ray's object store), never into logs, stats or manifests.
    """

    config: TeacherConfig
    api_key: str | None = field(repr=False)
    seed: int
    folder: Path  # generate/: the task appends to requests-<shard>.jsonl and reads every requests*.jsonl


def cache_files(folder: Path) -> list[Path]:
    """Every request cache file of a generate folder: this process's and other processes' shards'."""
    return sorted(folder.glob("requests*.jsonl"))


def teacher_totals(teacher: Teacher) -> dict[str, Any]:
    """A teacher's running totals: requests, per-endpoint counts and usage, CPU-seconds (embedded teacher)."""
    endpoint_counts = getattr(teacher, "endpoint_counts", None)
    endpoint_usage = getattr(teacher, "endpoint_usage", None)
    usage = getattr(teacher, "usage", None)
    if endpoint_usage is not None:
        by_endpoint = endpoint_usage()
    else:  # one machine, one record: the embedded teacher (or a test's stand-in without usage)
        by_endpoint = {teacher.name: usage.figures()} if isinstance(usage, Usage) else {}
    return {"requests_sent": getattr(teacher, "requests_sent", 0),
            "endpoints": endpoint_counts() if endpoint_counts else {}, "usage": by_endpoint,
            "cpu_s": getattr(teacher, "cpu_s", None)}


def totals_since(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What a shard added to a teacher's totals (`teacher_totals` after minus before): a shared teacher keeps counting."""
    def per_url(name: str) -> dict[str, dict[str, int]]:
        return {url: {k: v - before[name].get(url, {}).get(k, 0) for k, v in c.items()}
                for url, c in after[name].items()}

    cpu = None if after["cpu_s"] is None else round(after["cpu_s"] - (before["cpu_s"] or 0.0), 3)
    return {"requests_sent": after["requests_sent"] - before["requests_sent"], "endpoints": per_url("endpoints"),
            "usage": per_url("usage"), "cpu_s": cpu}


def ask_teacher(item: tuple[str, pl.DataFrame], *, config: TeacherConfig, teacher: Teacher | None = None,
                recipe: Recipe | None = None) -> shards.ShardOutput:
    """One row shard: n samples of each problem, from `teacher`, or a teacher made here from `recipe`."""
    label, problems = item
    cache = None
    if teacher is None:
        if recipe is None:
            raise ValueError(f"{ASK}: shard {label} needs a teacher or a recipe to make one")
        cache = RequestCache(recipe.folder / f"requests-{label}.jsonl", read_also=cache_files(recipe.folder))
        teacher = make_teacher(config, cache, api_key=recipe.api_key, seed=recipe.seed, progress=False)
    before = teacher_totals(teacher)
    try:
        frame = generation_rows(problems, teacher, config)
    finally:
        if cache is not None:
            cache.close()
    return shards.ShardOutput(tables={"generations": frame}, counts=totals_since(teacher_totals(teacher), before))


def generation_rows(problems: pl.DataFrame, teacher: Teacher, config: TeacherConfig) -> pl.DataFrame:
    """The generations table of some problems: n rows each, errors included."""
    built = [prompts.build(problem, source) for problem, source in problems.select("problem", "source").iter_rows()]
    completions = teacher.generate(built, sampling_params(config))
    ids = problems["id"].to_list()
    chat = config.style == "chat" and config.backend == "openai"  # the Tunix teacher always completes text
    shown = [json.dumps(list(p.messages), ensure_ascii=False) if chat else p.text for p in built]
    return pl.DataFrame([_row(c, ids, shown, teacher.name) for c in completions], schema=GENERATION_SCHEMA,
                        orient="row")


class CountingCache:
    """A request cache that reports samples done (found in it, or new and put in it) / `total` to `progress`."""

    def __init__(self, cache: RequestCache, total: int, progress: Callable[[float], None]):
        self.cache, self.total, self.progress, self.done = cache, max(total, 1), progress, 0

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached sample of `key`, counted as done when there is one."""
        hit = self.cache.get(key)
        if hit is not None:
            self._count()
        return hit

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Cache a new sample and count it as done."""
        self.cache.put(key, entry)
        self._count()

    def _count(self) -> None:
        self.done += 1
        self.progress(min(self.done / self.total, 1.0))

    def __getattr__(self, name: str) -> Any:  # everything else is the cache's
        return getattr(self.cache, name)


def generate(problems: pl.DataFrame, teacher: Teacher | None, config: TeacherConfig, *,
             plan: shards.Plan | None = None, recipe: Recipe | None = None) -> store.StageResult:
    """Ask the teacher for n samples of every problem; errors become rejected rows.

    `teacher` asks in this process; without it, each shard's task makes its own from `recipe`
    (Ray). `plan` says where the shards run; by default here, in memory.
    """
    started = time.time()
    plan = plan or shards.in_memory()
    items = [(label, (label, problems.slice(start, stop - start)))
             for label, (start, stop) in plan.rows("generate", problems.height)]
    shared: dict[str, Any] = {"config": config, "teacher": teacher} if teacher is not None else \
        {"config": config, "recipe": recipe}
    labels = plan.run(ask_teacher, items, name=ASK, shared=shared)
    frame = plan.concat(labels, "generations")
    kept = frame.filter(pl.col("error").is_null())
    rejected = frame.filter(pl.col("error").is_not_null()).with_columns(
        reject_reason=pl.lit(GenerateReason.TEACHER_ERROR.value), reject_detail=pl.col("error"))
    # What this run asked for: shards finished by a killed run sent their requests back then.
    asked = [plan.shards.counts(label) for label in plan.report[ASK].computed]
    elapsed = time.time() - started
    bill = billing(config, asked)
    stats = GenerateStats(rows_in=frame.height, kept=kept.height, rejected=rejected.height,
                          reasons=store.reason_counts(rejected), seconds=round(elapsed, 3),
                          teacher=teacher.name if teacher is not None else config.model,
                          samples_per_problem=config.n, from_cache=int(frame["cached"].sum()),
                          requests_sent=sum(c["requests_sent"] for c in asked),
                          tokens_per_s=round(bill["completion_tokens"] / max(elapsed, 1e-9), 1),
                          endpoints=_summed(asked, "endpoints"), **bill)
    return store.StageResult(kept=kept, rejected=rejected, stats=stats)


def _summed(asked: list[dict[str, Any]], name: str) -> dict[str, dict[str, int]]:
    """Per-URL figures (`endpoints` or `usage`) of every shard this run asked, added up, by URL."""
    total: dict[str, dict[str, int]] = {}
    for counts in asked:
        for url, figures in counts.get(name, {}).items():
            into = total.setdefault(url, dict.fromkeys(figures, 0))
            for key, value in figures.items():
                into[key] = into.get(key, 0) + value
    return dict(sorted(total.items()))


def billing(config: TeacherConfig, asked: list[dict[str, Any]]) -> dict[str, Any]:
    """The billed figures of the shards this run asked (GenerateStats fields), priced per endpoint."""
    usage = _summed(asked, "usage")
    total = Usage()
    for figures in usage.values():
        total.add(Usage(**figures))
    urls = config.base_urls()
    price_of = dict(zip([e.label for e in Endpoints(urls).all], config.prices())) if urls else {}
    costs = {url: cost(u["prompt_tokens"], u["completion_tokens"], price_of.get(url)) for url, u in usage.items()}
    costs = {url: dollars for url, dollars in costs.items() if dollars is not None}
    cpu = [c["cpu_s"] for c in asked if c.get("cpu_s") is not None]
    return {"billed_requests": total.billed, "retries": total.retries, "prompt_tokens": total.prompt_tokens,
            "completion_tokens": total.completion_tokens, "endpoint_usage": usage, "endpoint_cost_usd": costs,
            "cost_usd": round(sum(costs.values()), 10) if costs else None,
            "cpu_s": round(sum(cpu), 3) if cpu else None}


def _row(c: Completion, ids: list[str], shown: list[str], teacher: str) -> dict[str, object]:
    return {"problem_id": ids[c.prompt_idx], "sample_idx": c.sample_idx, "teacher": teacher,
            "prompt": shown[c.prompt_idx], "completion": c.text, "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "latency_s": round(c.latency_s, 4), "attempts": c.attempts, "cached": c.cached, "error": c.error}


def run(run_dir: Path, config: TeacherConfig, *, seed: int = 0, force: bool = False, api_key: str | None = None,
        teacher: Teacher | None = None, executor: Executor | None = None,
        shard_rows: int = shards.DEFAULT_SHARD_ROWS, progress: Callable[[float], None] | None = None
        ) -> store.Manifest:
    """Run the generate stage on the dedup output of `run_dir`, resuming from the request cache.

    `api_key` is the endpoint's key, resolved by the caller (flows/: a Prefect Secret block or
    the environment); `teacher` replaces the configured backend (tests; this process only).
    `executor` asks the shards' problems here or from Ray tasks (each its own client). `progress`
    gets the fraction of samples done as they land (in this process; failed ones do not count).
    """
    dedup = store.finished(run_dir, INPUT_STAGE)
    problems = dedup.read()
    # How hard and where to ask changes no sample: neither is part of the stage key.
    stage_config = {**config.model_dump(mode="json", exclude={"concurrency", "timeout_s", "max_attempts",
                                                              "bench_after", "bench_s", "price"}),
                    "template": prompts.template_version(), "seed": seed}
    inputs = {INPUT_STAGE: dedup.hash()}
    executor = executor or LocalExecutor()
    if config.backend == "tunix":
        # The embedded model samples one stream over all prompts, batched wide, on this machine's
        # accelerator: one shard here keeps its samples what they were.
        executor, shard_rows = LocalExecutor(), max(1, problems.height)
    elif teacher is not None and not executor.in_process:
        raise ValueError(f"generate: a teacher object runs in this process only, not on the {executor.name} engine")
    folder = run_dir / STAGE
    if config.backend == "tunix" and teacher is None:  # a Hub teacher: the commit its revision resolves to
        from models import registry

        inputs["teacher"] = registry.identity(config.model, revision=config.revision)

    def compute(plan: shards.Plan) -> store.StageResult:
        if not plan.executor.in_process:
            return generate(problems, None, config, plan=plan,
                            recipe=Recipe(config=config, api_key=api_key, seed=seed, folder=folder))
        cache = RequestCache(folder / CACHE_FILE, read_also=cache_files(folder))
        asked = cache if progress is None else CountingCache(cache, problems.height * config.n, progress)
        try:
            return generate(problems, teacher or make_teacher(config, asked, api_key=api_key, seed=seed), config,
                            plan=plan)
        finally:
            cache.close()

    previous = store.complete_manifest(run_dir / STAGE)
    if previous is not None and previous.counts["rejected"] and not force:
        # Failed samples are not a final answer: ask again (finished ones come from the cache).
        logger.info("generate: retrying %d samples that failed last time", previous.counts["rejected"])
        force = True
    return shards.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, compute=compute, executor=executor,
                            shard_rows=shard_rows, force=force)
