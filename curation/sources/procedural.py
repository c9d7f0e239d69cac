"""Seeded, offline problems from reasoning-gym generators: the embedded default source.

Each problem keeps the generator's entry (answer + metadata) in `meta`, so the generator's
own verifier can score an answer later (`score`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import polars as pl

from curation.sources.rows import make_problem, strip_math_delimiters
from machinery.schema import Problem, Rejected, problems_frame, rejected_frame

DEFAULT_TASKS = ("basic_arithmetic", "chain_sum", "gsm_symbolic", "fraction_simplification")


def source_name(task: str) -> str:
    """The `source` column value of a procedural task."""
    return f"procedural/{task}"


def _check_task(task: str) -> None:
    """Raise LookupError naming the valid tasks when reasoning-gym has no such generator."""
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise LookupError(f"unknown reasoning-gym task {task!r}; valid tasks: {', '.join(sorted(DATASETS))}")


def load(task: str, n: int, seed: int, **options: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate n problems of a reasoning-gym task with a seed: (kept, rejected) frames.

    `options` go to the generator's config (e.g. `max_terms=2` for chain_sum).
    """
    import reasoning_gym

    _check_task(task)
    if n < 1:
        raise ValueError(f"procedural source {task!r}: n must be at least 1, got {n}")
    try:
        dataset = reasoning_gym.create_dataset(task, size=n, seed=seed, **options)
    except TypeError as err:  # an unknown option: name the ones the generator has
        import dataclasses

        known = [f.name for f in dataclasses.fields(reasoning_gym.create_dataset(task, size=1, seed=0).config)]
        raise LookupError(f"procedural source {task!r}: bad options {sorted(options)} ({err}); "
                         f"the generator takes {', '.join(k for k in known if k not in ('seed', 'size'))}") from None
    kept: list[Problem] = []
    rejected: list[Rejected] = []
    for index in range(n):
        entry = dataset[index]
        metadata = entry.get("metadata", {})
        solution = metadata.get("answer_cot") if isinstance(metadata.get("answer_cot"), str) else None
        result = make_problem(
            source=source_name(task),
            source_id=f"seed{seed}/{index}",
            problem=entry.get("question"),
            answer=strip_math_delimiters(entry["answer"]) if isinstance(entry.get("answer"), str) else entry.get("answer"),
            solution=solution,
            meta={"task": task, "seed": seed, "index": index, "options": options, "entry": _jsonable(entry)},
            problem_field="question",
        )
        (kept if isinstance(result, Problem) else rejected).append(result)
    return problems_frame(kept), rejected_frame(rejected)


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as plain JSON values (tuples become lists), as the scorer will see it."""
    return json.loads(json.dumps({"question": entry.get("question"), "answer": entry.get("answer"),
                                  "metadata": entry.get("metadata", {})}, default=str))


@functools.lru_cache(maxsize=None)
def _scorer(task: str):
    """A dataset instance of the task, used only for its `score_answer` method."""
    import reasoning_gym

    _check_task(task)
    return reasoning_gym.create_dataset(task, size=1, seed=0)


def score(meta: str | dict[str, Any], answer: str | None) -> float:
    """The generator's own score of an answer for a procedural problem (0.0 to 1.0)."""
    info = json.loads(meta) if isinstance(meta, str) else meta
    if "task" not in info or "entry" not in info:
        raise ValueError(f"not a procedural problem's meta (needs 'task' and 'entry'): {sorted(info)}")
    return float(_scorer(info["task"]).score_answer(answer, info["entry"]))


def is_correct(meta: str | dict[str, Any], answer: str | None) -> bool:
    """True only for a full score: reasoning-gym gives partial credit (0.5 for "-4.0" vs "-4")."""
    return score(meta, answer) >= 1.0
