"""Procedural problems from reasoning-gym: seeded, in the problem schema, verifier kept."""

from __future__ import annotations

import json
import os
import time

import pytest

from curation.sources import procedural
from machinery.schema import PROBLEM_SCHEMA

TASKS = ["basic_arithmetic", "chain_sum", "gsm_symbolic", "fraction_simplification", "simple_equations"]


@pytest.mark.parametrize("task", TASKS)
def test_load_returns_n_problems_in_the_schema(task):
    kept, rejected = procedural.load(task, 8, seed=3)
    assert kept.schema == PROBLEM_SCHEMA
    assert (kept.height, rejected.height) == (8, 0)
    assert kept["id"].n_unique() == 8
    assert set(kept["source"]) == {f"procedural/{task}"}
    assert all(a.strip() for a in kept["answer"])


def test_same_seed_gives_the_same_problems_and_another_seed_differs():
    first, _ = procedural.load("basic_arithmetic", 10, seed=7)
    again, _ = procedural.load("basic_arithmetic", 10, seed=7)
    other, _ = procedural.load("basic_arithmetic", 10, seed=8)
    assert first.equals(again)
    assert first["problem"].to_list() != other["problem"].to_list()


@pytest.mark.parametrize("task", TASKS)
def test_generator_verifier_accepts_the_gold_answer(task):
    kept, _ = procedural.load(task, 5, seed=11)
    for meta, answer in kept.select("meta", "answer").iter_rows():
        assert procedural.is_correct(meta, answer), (task, answer)
        assert not procedural.is_correct(meta, "no answer here")


def test_partial_credit_does_not_count_as_correct():
    kept, _ = procedural.load("basic_arithmetic", 30, seed=0)
    row = next(r for r in kept.iter_rows(named=True) if r["answer"].lstrip("-").isdigit() and r["answer"] != "0")
    near = f"{row['answer']}.0"  # reasoning-gym scores "-4.0" against "-4" as partial credit
    assert procedural.score(row["meta"], near) < 1.0
    assert not procedural.is_correct(row["meta"], near)


def test_meta_keeps_task_seed_and_index():
    kept, _ = procedural.load("chain_sum", 3, seed=5)
    meta = json.loads(kept["meta"][2])
    assert (meta["task"], meta["seed"], meta["index"]) == ("chain_sum", 5, 2)
    assert kept["source_id"][2] == "seed5/2"


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(LookupError, match="basic_arithmetic"):
        procedural.load("no_such_task", 3, seed=0)


def test_generator_options_shape_the_problems_and_bad_ones_are_named():
    kept, _ = procedural.load("chain_sum", 10, seed=1, min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert all(p.count("+") + p.count("-") == 1 for p in kept["problem"])
    with pytest.raises(LookupError, match="bad options \\['bogus'\\].*max_terms"):
        procedural.load("chain_sum", 3, seed=1, bogus=2)


def _all_tasks() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@pytest.mark.parametrize("task", _all_tasks())
def test_a_task_is_allowed_by_default_only_with_a_reviewed_scorer_that_evaluates_no_code(task):
    """Every installed task: one that loads without `allow_unsafe_scorer` must be reviewed and free of eval & co."""
    found = procedural.EVALUATES_CODE.search(procedural.scorer_source(task))
    if task in procedural.REVIEWED_SAFE_SCORERS:
        assert found is None, f"{task}: reviewed, but the installed scorer now calls {found.group(0)}: review it again"
    try:
        procedural.check_scorer(task)
    except procedural.UnsafeScorerError as err:
        assert task in str(err)
        return
    assert task in procedural.REVIEWED_SAFE_SCORERS, f"{task}: allowed by default, but its scorer was never reviewed"
    assert found is None, f"{task}: allowed by default, but its scorer calls {found.group(0)}"


@pytest.mark.parametrize("task", ["spiral_matrix", "binary_matrix", "n_queens", "string_insertion",
                                  "bitwise_arithmetic", "number_sorting"])
def test_tasks_whose_scorers_eval_are_refused_without_the_allow_option(task):
    assert not procedural.scorer_is_safe(task)
    with pytest.raises(procedural.UnsafeScorerError, match=f"{task}.*allow_unsafe_scorer"):
        procedural.load(task, 2, seed=0)


def test_the_reviewed_list_names_only_installed_tasks():
    assert procedural.REVIEWED_SAFE_SCORERS <= set(_all_tasks())


def test_an_allowed_eval_scorer_runs_in_a_subprocess_with_a_time_limit(tmp_path):
    kept, _ = procedural.load("spiral_matrix", 1, seed=0, allow_unsafe_scorer=True)
    meta, gold = kept["meta"][0], kept["answer"][0]
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text(str(__import__('os').getpid()))"
    with pytest.raises(procedural.UnsafeScorerError):
        procedural.score(meta, code)  # never in this process
    assert not marker.exists()
    started = time.monotonic()
    found = procedural.scores([meta, meta, meta], [gold, "[x for x in iter(int, 1)]", code],
                              unsafe_tasks={"spiral_matrix"}, deadline_s=8)
    assert found[:2] == [1.0, None]  # the right answer; an endless loop gives no verdict
    assert found[2] == 0.0 and int(marker.read_text()) != os.getpid()  # it ran, in another process
    assert time.monotonic() - started < 60
    assert procedural.scores([meta], [gold]) == [None]  # not in unsafe_tasks: refused


def test_scores_refuses_an_unknown_or_broken_meta_without_raising():
    assert procedural.scores(['{"task": "no_such_task", "entry": {}}', "not json", "{}"], ["1", "1", "1"]) == [
        None, None, None]
