"""A small built run folder (build/sft.parquet and build/data.parquet) for the training tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from machinery import formats, store
from machinery.config import Config

STUDENT = "tiny-gemma3"


def problems(n: int) -> list[tuple[str, str]]:
    """(problem, gold) pairs: two-term sums."""
    return [(f"What is {i} + {i + 3}?", str(2 * i + 3)) for i in range(n)]


def make_run(run_dir: Path, *, n_train: int = 6, n_val: int = 2, long_problems: int = 0,
             student: str = STUDENT) -> Path:
    """Write a complete build stage in `student`'s chat template: SFT rows with short answers, GRPO rows with golds."""
    end = formats.chat_template(student).end_of_turn
    rows = []
    for i, (problem, gold) in enumerate(problems(n_train + n_val + long_problems)):
        if i >= n_train + n_val:
            problem = problem + " Think step by step about it. " * 40  # longer than any test limit
        rows.append({"problem_id": f"p{i}", "split": "train" if i < n_train or i >= n_train + n_val else "validation",
                     "source": "chain_sum", "problem": problem, "gold": gold,
                     "prompt": formats.student_prompt(problem, student), "pass_rate": 0.5, "difficulty": 0.5,
                     "meta": "{}"})
    grpo = pl.DataFrame(rows)
    sft = grpo.select("problem_id", "split", "source", "problem", "gold", "prompt", "pass_rate", "meta").with_columns(
        sample_idx=pl.lit(0),
        completion=pl.format("<reasoning>add</reasoning><answer>{}</answer>{}", pl.col("gold"), pl.lit(end)),
        tokens=pl.lit(8))

    def compute() -> store.StageResult:
        stats = store.StageStats(rows_in=grpo.height, kept=grpo.height, rejected=0)
        return store.StageResult(kept=grpo, rejected=grpo.clear().with_columns(reject_reason=pl.lit("x")),
                                 stats=stats, extra={"sft": sft})

    store.run_stage(run_dir, "build", config={"test": True}, inputs={}, compute=compute)
    return run_dir


def config(*sets: str, student: str = STUDENT) -> Config:
    """The cpu-smoke profile on the tiny student (or `student`), small LoRA."""
    from machinery.config import load_config

    return load_config("cpu-smoke", sets=[f"student.model={student}", "sft.lora.rank=4", "sft.lora.alpha=8",
                                          "sft.max_length=384", "grpo.max_prompt_length=384", *sets])
