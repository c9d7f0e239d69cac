"""The pull stage: every configured source -> one problem table (kept + rejected)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import polars as pl

from curation import sources
from machinery import shards, store
from machinery.config import ProceduralSource, PullConfig, Source
from machinery.execution import Executor
from machinery.schema import RejectReason

logger = logging.getLogger(__name__)

STAGE = "pull"


@dataclass(kw_only=True)
class PullStats(store.StageStats):
    """Pull figures, also per source: {source: {"kept": n, "rejected": n}}."""

    per_source: dict[str, dict[str, int]] = field(default_factory=dict)


_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # control characters other than tab, newline, return


def screen(problems: pl.DataFrame, max_chars: int, max_answer_chars: int | None = None,
           max_solution_chars: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected): a text field over its cap (`too_long`) or with control characters leaves, the field named.

    Every later check reads these fields, so the caps bound its work (`pull.max_chars` for
    the problem, `pull.max_answer_chars`, `pull.max_solution_chars`; None: no cap).
    """
    rules = []  # (condition, reason, detail), the first that holds wins
    for name, key, cap in (("problem", "max_chars", max_chars), ("answer", "max_answer_chars", max_answer_chars),
                           ("solution", "max_solution_chars", max_solution_chars)):
        if cap is not None:
            length = pl.col(name).str.len_chars()
            rules.append((length > cap, RejectReason.TOO_LONG,
                          pl.format(f"{name} has {{}} characters > pull.{key} {cap}", length)))
    for name in ("problem", "answer", "solution"):
        rules.append((pl.col(name).fill_null("").str.contains(_CONTROL), RejectReason.CONTROL_CHARACTERS,
                      pl.lit(f"{name} holds control characters (NUL, BEL, ...)")))
    reason = pl.when(rules[0][0]).then(pl.lit(rules[0][1].value))
    detail = pl.when(rules[0][0]).then(rules[0][2])
    for condition, why, said in rules[1:]:
        reason, detail = reason.when(condition).then(pl.lit(why.value)), detail.when(condition).then(said)
    marked = problems.with_columns(reject_reason=reason, reject_detail=detail)
    return (marked.filter(pl.col("reject_reason").is_null()).drop("reject_reason", "reject_detail"),
            marked.filter(pl.col("reject_reason").is_not_null()))


def load_source(item: tuple[Source, int]) -> shards.ShardOutput:
    """One source's rows (kept and rejected): the shard of the pull stage."""
    spec, seed = item
    kept, rejected = sources.load(spec, seed)
    return shards.ShardOutput(tables={"kept": kept, "rejected": rejected})


def pull(config: PullConfig, plan: shards.Plan | None = None) -> store.StageResult:
    """Load all sources (one shard each); a problem id seen twice is rejected as a duplicate after its first."""
    started = time.time()
    plan = plan or shards.in_memory()
    labels = plan.run(load_source, [(f"source-{i:04d}", (spec, config.seed)) for i, spec in enumerate(config.sources)],
                      name="pull.sources")
    kept = plan.concat(labels, "kept")
    rejected = plan.concat(labels, "rejected")
    first = kept["id"].is_first_distinct()
    duplicates = kept.filter(~first).with_columns(
        reject_reason=pl.lit(RejectReason.DUPLICATE_ID.value),
        reject_detail=pl.lit("the same source row was listed twice; first copy kept"),
    )
    kept = kept.filter(first)
    kept, hostile = screen(kept, config.max_chars, config.max_answer_chars, config.max_solution_chars)
    rejected = pl.concat([rejected, duplicates, hostile])
    per_source: dict[str, dict[str, int]] = {}
    for name, frame in (("kept", kept), ("rejected", rejected)):
        for source, count in frame.group_by("source", maintain_order=True).len().iter_rows():
            per_source.setdefault(source, {"kept": 0, "rejected": 0})[name] = count
    stats = PullStats(rows_in=kept.height + rejected.height, kept=kept.height, rejected=rejected.height,
                      reasons=store.reason_counts(rejected), seconds=round(time.time() - started, 3),
                      per_source=per_source)
    return store.StageResult(kept=kept, rejected=rejected, stats=stats)


def input_hashes(config: PullConfig) -> dict[str, str]:
    """What the pulled rows depend on beyond the config: local file contents, generator version."""
    inputs: dict[str, str] = {}
    for spec in config.sources:
        if isinstance(spec, ProceduralSource):
            inputs["reasoning-gym"] = metadata.version("reasoning-gym")
        elif spec.data_files is not None:
            files = spec.data_files if isinstance(spec.data_files, list) else [spec.data_files]
            inputs.update({f"file:{path}": store.path_hash(Path(path)) for path in files})
        else:
            inputs[f"hub:{spec.id}"] = spec.revision or "main"
    return inputs


def run(run_dir: Path, config: PullConfig, *, force: bool = False, executor: Executor | None = None,
        shard_rows: int = shards.DEFAULT_SHARD_ROWS) -> store.Manifest:
    """Run the pull stage into `run_dir/pull`, skipping it when its output is complete.

    `executor` loads the sources (one shard each) in this process or on a Ray cluster.
    """
    return shards.run_stage(run_dir, STAGE, config=config.model_dump(mode="json"), inputs=input_hashes(config),
                            compute=lambda plan: pull(config, plan), executor=executor, shard_rows=shard_rows,
                            force=force)
