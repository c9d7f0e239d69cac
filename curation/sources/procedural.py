"""Seeded, offline problems from reasoning-gym generators: the embedded default source.

Each problem keeps the generator's entry (answer + metadata) in `meta`, so the generator's
own verifier can score an answer later (`score`).

Some generators' scorers run `eval()` on the answer (spiral_matrix, binary_matrix, n_queens,
string_insertion), on the metadata (bitwise_arithmetic) or on the gold (number_sorting), and
the answer comes from a teacher endpoint or a GRPO sample. So a task is loaded and scored
in this process only when its scorer was read and found safe (`REVIEWED_SAFE_SCORERS`);
any other task needs `allow_unsafe_scorer` and is then scored in a subprocess with a time
limit (`score_isolated`). That bounds the time, not what the code may do: allow only tasks
whose answers come from models and endpoints you trust.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import json
import logging
import multiprocessing
import re
from collections.abc import Collection, Sequence
from typing import Any

import polars as pl

from curation.sources.rows import make_problem, strip_math_delimiters
from machinery.schema import Problem, Rejected, problems_frame, rejected_frame

logger = logging.getLogger(__name__)

# Tasks whose `score_answer` (and what it calls) was read in reasoning-gym 0.1.25 and only
# compares strings, Decimals, floats or ints: scored here, in this process. Add a task only
# after reading its scorer; tests/curation/sources/test_procedural.py checks every task.
REVIEWED_SAFE_SCORERS = frozenset({
    "basic_arithmetic",  # ProceduralDataset.score_answer: string equality and substring share
    "simple_equations",  # the same inherited scorer
    "chain_sum",  # utils.compute_decimal_reward: Decimal() of the answer
    "gsm_symbolic",  # one linear number regex, float()
    "fraction_simplification",  # one anchored regex, int() of the two parts
})
# What a scorer's source must not contain to stay trusted after a reasoning-gym upgrade.
EVALUATES_CODE = re.compile(r"\b(?:eval|exec|compile|sympify|parse_expr|literal_eval|parse_latex)\b")


class UnsafeScorerError(LookupError):
    """A task's scorer may evaluate the answer as code, and the config did not allow it."""


def source_name(task: str) -> str:
    """The `source` column value of a procedural task."""
    return f"procedural/{task}"


def _check_task(task: str) -> None:
    """Raise LookupError naming the valid tasks when reasoning-gym has no such generator."""
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise LookupError(f"unknown reasoning-gym task {task!r}; valid tasks: {', '.join(sorted(DATASETS))}")


def scorer_source(task: str) -> str:
    """The source of a task's `score_answer`, as installed."""
    from reasoning_gym.factory import DATASETS

    _check_task(task)
    return inspect.getsource(DATASETS[task][0].score_answer)


@functools.cache
def scorer_is_safe(task: str) -> bool:
    """True for a reviewed task whose installed scorer still evaluates no code (an upgrade may change it)."""
    if task not in REVIEWED_SAFE_SCORERS:
        return False
    if EVALUATES_CODE.search(scorer_source(task)):
        logger.warning("procedural task %r: the installed scorer now evaluates code; treated as unreviewed", task)
        return False
    return True


def check_scorer(task: str, allow_unsafe_scorer: bool = False) -> None:
    """Raise UnsafeScorerError unless the task's scorer is reviewed safe or explicitly allowed."""
    _check_task(task)
    if not allow_unsafe_scorer and not scorer_is_safe(task):
        raise UnsafeScorerError(
            f"procedural task {task!r}: its scorer is not reviewed as safe (it may eval() the answer); reviewed: "
            f"{', '.join(sorted(REVIEWED_SAFE_SCORERS))}. Set allow_unsafe_scorer: true on the source (and pass "
            f"the task in the verifier's unsafe_tasks) to score it in a subprocess with a time limit")


def load(task: str, n: int, seed: int, *, allow_unsafe_scorer: bool = False, **options: Any
         ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate n problems of a reasoning-gym task with a seed: (kept, rejected) frames.

    `options` go to the generator's config (e.g. `max_terms=2` for chain_sum). A task whose
    scorer is not reviewed safe needs `allow_unsafe_scorer` (UnsafeScorerError otherwise).
    """
    import reasoning_gym

    check_scorer(task, allow_unsafe_scorer)
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


def _entry(meta: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(task, generator entry) of a procedural problem's meta."""
    info = json.loads(meta) if isinstance(meta, str) else meta
    if not isinstance(info, dict) or "task" not in info or "entry" not in info:
        raise ValueError(f"not a procedural problem's meta (needs 'task' and 'entry'): {str(info)[:80]}")
    return info["task"], info["entry"]


def score(meta: str | dict[str, Any], answer: str | None) -> float:
    """The generator's own score of an answer (0.0 to 1.0), in this process: reviewed-safe tasks only.

    UnsafeScorerError for any other task: its scorer runs only through `score_isolated`.
    """
    task, entry = _entry(meta)
    check_scorer(task)
    return float(_scorer(task).score_answer(answer, entry))


def is_correct(meta: str | dict[str, Any], answer: str | None) -> bool:
    """True only for a full score: reasoning-gym gives partial credit (0.5 for "-4.0" vs "-4")."""
    return score(meta, answer) >= 1.0


def scores(metas: Sequence[str | dict[str, Any]], preds: Sequence[str | None], *, unsafe_tasks: Collection[str] = (),
           deadline_s: float = 10.0) -> list[float | None]:
    """The generator's score of each answer; None when refused (task not safe nor allowed) or past the deadline.

    Reviewed-safe tasks are scored here; tasks in `unsafe_tasks` in a subprocess, each
    within `deadline_s`. A meta naming any other task is refused, whatever else it says.
    """
    results: list[float | None] = [None] * len(metas)
    isolated = []
    for i, (meta, pred) in enumerate(zip(metas, preds)):
        try:
            task, _ = _entry(meta)
        except (ValueError, TypeError) as err:  # a broken meta is one unscored row, not a failed batch
            logger.warning("procedural meta of item %d unreadable: %s", i, err)
            continue
        if scorer_is_safe(task):
            results[i] = score(meta, pred)
        elif task in unsafe_tasks:
            isolated.append(i)
        else:
            logger.warning("procedural task %r is not reviewed safe nor in unsafe_tasks: not scored", task)
    for i, value in zip(isolated, score_isolated([(metas[i], preds[i]) for i in isolated], deadline_s=deadline_s)):
        results[i] = value
    return results


def _score_unchecked(pair: tuple[str | dict[str, Any], str | None]) -> float:
    """Worker entry point: any task's scorer, in a subprocess; an answer that breaks it scores 0."""
    task, entry = _entry(pair[0])
    try:
        return float(_scorer(task).score_answer(pair[1], entry))
    except Exception:  # noqa: BLE001 - the scorer's error on a hostile answer is a wrong answer
        return 0.0


def score_isolated(pairs: Sequence[tuple[str | dict[str, Any], str | None]], *, deadline_s: float = 10.0
                   ) -> list[float | None]:
    """Score (meta, answer) pairs in a spawned subprocess; a pair past `deadline_s` gives None and a fresh process."""
    results: list[float | None] = [None] * len(pairs)
    todo = list(range(len(pairs)))
    while todo:
        pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = [(i, pool.submit(_score_unchecked, pairs[i])) for i in todo]
            todo = []
            for n, (i, future) in enumerate(futures):
                try:
                    results[i] = future.result(timeout=deadline_s)
                except (cf.TimeoutError, cf.process.BrokenProcessPool) as err:
                    logger.warning("procedural scorer gave no verdict (%s after %.0f s): answer=%.80r",
                                   type(err).__name__, deadline_s, pairs[i][1])
                    todo = [j for j, _ in futures[n + 1 :]]
                    for proc in list(getattr(pool, "_processes", {}).values()):
                        proc.terminate()  # a looping eval never returns on its own
                    break
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return results
