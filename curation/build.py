"""The build stage: the SFT set (one row per kept trace) and the GRPO prompt set (one per problem).

Both use the student's chat template and the same train/validation split by problem id
(seeded), so no problem is in both splits of either set. GRPO drops problems every teacher
sample solved or none did: all rewards equal means zero advantage, nothing to learn.
Outputs: `build/data.parquet` (GRPO set), `build/sft.parquet`, `build/rejected.parquet`
(problems left out of GRPO, with the reason) and Hugging Face datasets under `build/hf/`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import polars as pl

from machinery import store
from machinery.config import BuildConfig
from machinery.formats import SFT_SET, SYSTEM, chat_template, student_prompt

logger = logging.getLogger(__name__)

STAGE = "build"
INPUT_STAGES = ("dedup", "filter")
PASS_RATES = "pass_rates.parquet"  # the filter stage's per-problem pass rates
HF_DIR = "hf"


def split_of(problem_id: str, seed: int, val_fraction: float) -> str:
    """"train" or "validation" for a problem, from a seeded hash of its id (stable across sets)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


class BuildReason(StrEnum):
    """Why a problem is not in the GRPO set."""

    NO_TEACHER_SAMPLES = "no_teacher_samples"
    ZERO_ADVANTAGE_ALL_SOLVED = "zero_advantage_all_solved"
    ZERO_ADVANTAGE_NONE_SOLVED = "zero_advantage_none_solved"


@dataclass(kw_only=True)
class BuildStats(store.StageStats):
    """Sizes of both sets, for the data card."""

    sft_rows: dict[str, int] = field(default_factory=dict)
    grpo_rows: dict[str, int] = field(default_factory=dict)
    student_template: str = ""  # where the student's chat template came from


def build(problems: pl.DataFrame, traces: pl.DataFrame, pass_rates: pl.DataFrame, config: BuildConfig,
          *, student: str, seed: int, revision: str | None = None) -> store.StageResult:
    """The SFT rows (all kept traces) and the GRPO prompt set (problems with something to learn)."""
    started = time.time()
    template = chat_template(student, revision)
    end = template.end_of_turn  # the completion ends the turn: the student learns to stop there
    split = pl.col("problem_id").map_elements(lambda i: split_of(i, seed, config.val_fraction), return_dtype=pl.String)
    # `meta` travels on: the GRPO reward and eval need a procedural problem's generator entry.
    facts = problems.select(pl.col("id").alias("problem_id"), "problem", "source", pl.col("answer").alias("gold"),
                            "meta")
    sft = (traces.select("problem_id", "sample_idx", "completion", "tokens", "pass_rate")
           .join(facts, on="problem_id", how="left", maintain_order="left")
           .with_columns(split=split,
                         prompt=pl.col("problem").map_elements(lambda p: student_prompt(p, student, revision=revision),
                                                               return_dtype=pl.String),
                         messages=pl.struct("problem", "completion").map_elements(
                             lambda r: [{"role": "user", "content": f"{SYSTEM}\n\n{r['problem']}"},
                                        {"role": "assistant", "content": r["completion"]}],
                             return_dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))))
           .with_columns(completion=pl.col("completion") + end)
           .select("problem_id", "sample_idx", "split", "source", "problem", "gold", "prompt", "completion",
                   "messages", "tokens", "pass_rate", "meta"))
    grpo = (facts.join(pass_rates.select("problem_id", "pass_rate"), on="problem_id", how="left",
                       maintain_order="left")
            .with_columns(split=split, difficulty=1.0 - pl.col("pass_rate"),
                          prompt=pl.col("problem").map_elements(lambda p: student_prompt(p, student, revision=revision),
                                                                return_dtype=pl.String)))
    unsampled = pl.when(pl.col("pass_rate").is_null()).then(pl.lit(BuildReason.NO_TEACHER_SAMPLES.value))
    reason = (unsampled.when(pl.col("pass_rate") >= 1.0).then(pl.lit(BuildReason.ZERO_ADVANTAGE_ALL_SOLVED.value))
              .when(pl.col("pass_rate") <= 0.0).then(pl.lit(BuildReason.ZERO_ADVANTAGE_NONE_SOLVED.value)))
    grpo = grpo.with_columns(reject_reason=reason if config.drop_zero_advantage else unsampled)
    columns = ["problem_id", "split", "source", "problem", "gold", "prompt", "pass_rate", "difficulty", "meta"]
    kept = grpo.filter(pl.col("reject_reason").is_null()).select(columns)
    rejected = grpo.filter(pl.col("reject_reason").is_not_null()).select(
        *columns, "reject_reason",
        reject_detail=pl.when(pl.col("pass_rate").is_null()).then(pl.lit("the teacher gave no sample"))
        .otherwise(pl.format("teacher pass rate {}", pl.col("pass_rate"))))
    stats = BuildStats(rows_in=grpo.height, kept=kept.height, rejected=rejected.height,
                       reasons=store.reason_counts(rejected), seconds=round(time.time() - started, 3),
                       sft_rows=_split_counts(sft), grpo_rows=_split_counts(kept), student_template=template.source)
    return store.StageResult(kept=kept, rejected=rejected, stats=stats, extra={"sft": sft})


def _split_counts(frame: pl.DataFrame) -> dict[str, int]:
    return {name: frame.filter(pl.col("split") == name).height for name in ("train", "validation")}


def save_hf(run_dir: Path, key: str) -> None:
    """Write both sets as `datasets.DatasetDict`s under build/hf/{sft,grpo} (load_from_disk)."""
    import datasets

    target = run_dir / STAGE / HF_DIR
    marker = target / "key"
    if marker.is_file() and marker.read_text() == key:
        return
    built = store.finished(run_dir, STAGE)
    sets = {"sft": built.read(SFT_SET), "grpo": built.read()}
    for name, frame in sets.items():
        splits = {s: datasets.Dataset.from_polars(frame.filter(pl.col("split") == s).drop("split"))
                  for s in ("train", "validation")}
        datasets.DatasetDict(splits).save_to_disk(str(target / name))
    store.atomic_write_bytes(marker, key.encode())


def run(run_dir: Path, config: BuildConfig, *, student: str, seed: int, revision: str | None = None,
        force: bool = False) -> store.Manifest:
    """Run the build stage on the dedup and filter outputs of `run_dir`."""
    dedup, filtered = (store.finished(run_dir, stage) for stage in INPUT_STAGES)
    # The template's own hash: a new revision of the student with another template rebuilds the sets.
    inputs = {"dedup": dedup.hash(), "filter": filtered.hash(), "pass_rates": filtered.hash(PASS_RATES),
              "chat_template": chat_template(student, revision).digest}
    stage_config = {**config.model_dump(mode="json"), "student": student, "seed": seed}

    def compute() -> store.StageResult:
        return build(dedup.read(), filtered.read(), filtered.read(PASS_RATES), config, student=student, seed=seed,
                     revision=revision)

    manifest = store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, force=force, compute=compute)
    save_hf(run_dir, manifest.key)
    return manifest
