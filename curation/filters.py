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

No process holds the trace table: the work runs in phases over files (`curation.filter_phases`),
the per-trace checks per row shard, the cross-row work per partition of problem ids
(`hash(problem_id) % P`, about `PARTITION_TRACES` traces each), the kept and rejected rows per
row shard again, and the pass rates per chunk of problems; this process passes file names and
counts, and each phase's finished tasks survive a killed run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curation import filter_phases as phases
from curation.checks import FilterReason
from curation.judge import Judge
from curation.teacher.cache import RequestCache
from machinery import shards, stats, store
from machinery.config import FilterConfig
from machinery.execution import Executor

logger = logging.getLogger(__name__)

STAGE = "filter"
INPUT_STAGES = ("generate", "dedup")
JUDGE_CACHE = "judge.jsonl"
# The work of each phase, as the executor names it (and Ray's task list shows it)
CHECKS = "filter.checks"  # per row shard: the per-trace checks
CROSS = "filter.problems"  # per partition of problem ids: pass rates, near-identical traces, judge, best-of-N
WRITE = "filter.write"  # per row shard: kept and rejected rows
RATES = "filter.pass_rates"  # per chunk of the dedup output: pass rates in its order
PARTITION_TRACES = 250_000  # traces per partition of problem ids: what a phase-2 task holds at most, about


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


def filter_traces(generations: pl.DataFrame, problems: pl.DataFrame, config: FilterConfig, *,
                  judge: Judge | None = None, plan: shards.Plan | None = None,
                  partition_traces: int = PARTITION_TRACES) -> store.StageResult:
    """Split generations into kept traces and rejected ones; compute per-problem pass rates.

    The stage's own phases (`filter_files`) on frames: they are written to the plan's shard
    folder first (a scratch folder, with `plan.shard_rows`, when the plan keeps shards in
    memory or there is none), and the result comes back as frames.
    """
    if plan is not None and isinstance(plan.shards, shards.FolderShards):
        return _on_frames(generations, problems, config, judge=judge, plan=plan, partition_traces=partition_traces)
    shard_rows = plan.shard_rows if plan is not None else shards.DEFAULT_SHARD_ROWS
    with shards.scratch_plan(shard_rows=shard_rows) as scratch:
        return _on_frames(generations, problems, config, judge=judge, plan=scratch, partition_traces=partition_traces)


def _on_frames(generations: pl.DataFrame, problems: pl.DataFrame, config: FilterConfig, *, judge: Judge | None,
               plan: shards.Plan, partition_traces: int) -> store.StageResult:
    """`filter_files` on frames written to the plan's folder; its parts read back as frames."""
    folder = plan.folder / "frames"
    store.write_parquet(generations, folder / "generations.parquet")
    store.write_parquet(problems, folder / "problems.parquet")
    result = filter_files(folder / "generations.parquet", folder / "problems.parquet", config, plan=plan,
                          judge=judge, partition_traces=partition_traces)
    return store.StageResult(kept=_frame(result.kept), rejected=_frame(result.rejected), stats=result.stats,
                             extra={name: _frame(table) for name, table in result.extra.items()})


def _frame(table: store.Parts | pl.DataFrame) -> pl.DataFrame:
    """A table's rows in one frame (for callers on frames: small tables)."""
    if isinstance(table, pl.DataFrame):
        return table
    return pl.concat([pl.read_parquet(file) for file in table.files], how="vertical")


def filter_files(generations: Path, problems: Path, config: FilterConfig, *, plan: shards.Plan,
                 judge: Judge | None = None, recipe: phases.JudgeRecipe | None = None,
                 partition_traces: int = PARTITION_TRACES) -> store.StageResult:
    """The filter stage from its input files, in the four phases of `curation.filter_phases`.

    This process passes file names, offsets and counts only; every table is read and written
    by the tasks (`plan` says where they run; finished tasks of a killed run are reused). The
    judge is `judge` (this process) or made in each partition's task from `recipe` (Ray).
    """
    started = time.time()
    traces = store.row_count(generations)
    parts = phases.partition_count(traces, partition_traces)
    inputs = phases.Inputs(generations=generations, problems=problems, folder=plan.folder, partitions=parts,
                           judged=judge is not None or recipe is not None)
    # Labels name what the task's output depends on, so a run with other shards or P reuses none of it.
    row_shards = plan.rows(f"checks-p{parts}", traces)
    checked = plan.run(phases.check_shard, [(label, (label, a, b)) for label, (a, b) in row_shards], name=CHECKS,
                       shared={"inputs": inputs, "config": config, "workers": plan.executor.task_cpus})
    to_partition = [plan.shards.counts(label)["partitions"] for label in checked]
    cross = _cross_rows(plan, inputs, config, checked, to_partition, [a for _, (a, _) in row_shards],
                        judge=judge, recipe=recipe)
    to_shard = [plan.shards.counts(label)["shards"] for label in cross]
    written = _write_shards(plan, inputs, checked, cross, to_shard, row_shards)
    n_problems = store.row_count(problems)
    rated = plan.run(phases.pass_rates, [(label, rows) for label, rows in plan.rows("rates", n_problems)],
                     name=RATES, shared={"inputs": inputs, "rates": [plan.path(label, "rates") for label in cross]})
    return store.StageResult(
        kept=store.Parts(files=tuple(plan.path(label, "kept") for label in written),
                         height=sum(plan.shards.counts(label)["kept"] for label in written)),
        rejected=store.Parts(files=tuple(plan.path(label, "rejected") for label in written),
                             height=sum(plan.shards.counts(label)["rejected"] for label in written)),
        stats=_stats(plan, traces, n_problems, checked, cross, written, rated, judge=judge, recipe=recipe,
                     started=started),
        extra={"pass_rates": store.Parts(files=tuple(plan.path(label, "pass_rates") for label in rated),
                                         height=n_problems)})


def _cross_rows(plan: shards.Plan, inputs: phases.Inputs, config: FilterConfig, checked: list[str],
                to_partition: list[list[int]], starts: list[int], *, judge: Judge | None,
                recipe: phases.JudgeRecipe | None) -> list[str]:
    """Phase 2: one task per partition, given its slice of every check shard's partition file."""
    where = [phases.slices(sizes) for sizes in to_partition]
    items = []
    for p in range(inputs.partitions):
        label = f"problems-{p:05d}-of-{inputs.partitions:05d}-rows{plan.shard_rows}"
        pieces = [(phases.partition_file(inputs.folder, shard), *where[s][p])
                  for s, shard in enumerate(checked) if to_partition[s][p]]
        items.append((label, (label, pieces)))
    shared: dict[str, Any] = {"inputs": inputs, "config": config, "starts": starts}
    shared |= {"judge": judge} if judge is not None else {"recipe": recipe}
    return plan.run(phases.cross_rows, items, name=CROSS, shared=shared)


def _write_shards(plan: shards.Plan, inputs: phases.Inputs, checked: list[str], cross: list[str],
                  to_shard: list[list[int]], row_shards: list[tuple[str, tuple[int, int]]]) -> list[str]:
    """Phase 3: one task per row shard, given its slice of every partition's final verdicts."""
    where = [phases.slices(sizes) for sizes in to_shard]
    items = []
    for s, (label, (start, stop)) in enumerate(row_shards):
        label = label.replace("checks-", "write-", 1)
        pieces = [(phases.final_file(inputs.folder, part), *where[p][s])
                  for p, part in enumerate(cross) if to_shard[p][s]]
        items.append((label, (label, start, stop, plan.path(checked[s], "rows"), pieces)))
    return plan.run(phases.write_shard, items, name=WRITE, shared={"inputs": inputs})


def _stats(plan: shards.Plan, traces: int, n_problems: int, checked: list[str], cross: list[str], written: list[str],
           rated: list[str], *, judge: Judge | None, recipe: phases.JudgeRecipe | None, started: float) -> FilterStats:
    """The stage's figures from its tasks' counts (stats as the one-process filter gave them)."""
    counts = {label: plan.shards.counts(label) for label in [*checked, *cross, *written, *rated]}
    reasons = phases.summed([counts[label]["reasons"] for label in written])
    histogram = phases.summed([counts[label]["histogram"] for label in rated])
    rates_seen = sum(histogram.values())
    figures = {}
    if judge is not None or recipe is not None:  # this run's requests: a killed run's tasks asked before
        price = judge.price if judge is not None else (recipe.config.price.pair() if recipe.config.price else None)
        figures = phases.judge_figures([plan.shards.counts(label)["judge"] for label in plan.report[CROSS].computed],
                                       price)
    return FilterStats(rows_in=traces, kept=sum(counts[label]["kept"] for label in written),
                       rejected=sum(counts[label]["rejected"] for label in written), reasons=reasons,
                       seconds=round(time.time() - started, 3), problems=n_problems,
                       problems_with_a_trace=sum(counts[label]["problems_kept"] for label in cross),
                       mean_pass_rate=phases.mean_rate([counts[label]["correct_by_samples"] for label in rated],
                                                       rates_seen),
                       pass_rate_histogram=histogram,
                       audit=phases.summed([counts[label]["audit"] for label in checked]),
                       examples=phases.first_examples([counts[label]["examples"] for label in written]),
                       judge=figures)


def run(run_dir: Path, config: FilterConfig, *, force: bool = False, judge_api_key: str | None = None,
        executor: Executor | None = None, shard_rows: int = shards.DEFAULT_SHARD_ROWS,
        partition_traces: int = PARTITION_TRACES) -> store.Manifest:
    """Run the filter stage on the generations and problems of `run_dir`.

    With `filter.judge`, verdicts are cached in `filter/judge.jsonl` (this process) or one
    `filter/judge-<partition>.jsonl` per partition task (Ray), every one read back, so a killed
    run resumes without asking again; `judge_api_key` is the judge's key, resolved by the
    caller (it travels with the tasks, never into a file). `executor` runs each phase's tasks
    here or on a Ray cluster; finished tasks survive a killed run. `partition_traces` bounds a
    phase-2 task's traces; like the shard size it changes no output, so it is not in the stage key.
    """
    found = {stage: store.finished(run_dir, stage) for stage in INPUT_STAGES}
    inputs = {stage: done.hash() for stage, done in found.items()}
    folder = run_dir / STAGE
    paths = (found["generate"].path(), found["dedup"].path())

    def compute(plan: shards.Plan) -> store.StageResult:
        if config.judge is None:
            return filter_files(*paths, config, plan=plan, partition_traces=partition_traces)
        if not plan.executor.in_process:
            recipe = phases.JudgeRecipe(config=config.judge, api_key=judge_api_key, folder=folder)
            return filter_files(*paths, config, plan=plan, recipe=recipe, partition_traces=partition_traces)
        cache = RequestCache(folder / JUDGE_CACHE, read_also=phases.judge_cache_files(folder))
        try:
            judge = Judge(config.judge, api_key=judge_api_key, cache=cache)
            return filter_files(*paths, config, plan=plan, judge=judge, partition_traces=partition_traces)
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
