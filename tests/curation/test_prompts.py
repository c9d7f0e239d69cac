"""The teacher's few-shot prompts: each procedural task gets its own examples, and every example is one the filter keeps."""

from __future__ import annotations

import json
import math
import re

import pytest
import sympy

from curation import checks
from curation.sources import procedural
from curation.teacher import prompts
from machinery.config import load_config
from machinery.formats import SYSTEM


def _gold(source: str, problem: str) -> str:
    """The answer to an example's problem, worked out from its text alone (not from the example's own answer)."""
    task = source.removeprefix("procedural/")
    if task == "basic_arithmetic":  # "Calculate 6 * 7."
        return str(sympy.sympify(problem.removeprefix("Calculate ").removesuffix(".")))
    if task == "chain_sum":  # "State the final answer to the following arithmetic problem: 5 + 8 ="
        return str(sympy.sympify(problem.split(":")[1].removesuffix("=")))
    if task == "simple_equations":  # "Solve for y: 10 - y = 4"
        left, right = problem.split(":")[1].split("=")
        (root,) = sympy.solve(sympy.sympify(left) - sympy.sympify(right))
        return str(root)
    if task == "fraction_simplification":  # "Simplify the fraction $\dfrac{10}{25}$ ..."
        numerator, denominator = map(int, re.findall(r"\d+", problem)[:2])
        common = math.gcd(numerator, denominator)
        return f"{numerator // common}/{denominator // common}"
    raise LookupError(f"no worked-out gold for {source}: add one for its new few-shot set")


def _meta(source: str, problem: str, gold: str) -> str:
    """The problem's meta as `procedural.load` writes it, so the generator's own scorer judges the answer too."""
    task = source.removeprefix("procedural/")
    metadata = {}
    if task == "fraction_simplification":  # its scorer reads the fraction from the metadata, not the answer
        numerator, denominator = map(int, re.findall(r"\d+", problem)[:2])
        simple_numerator, simple_denominator = map(int, gold.split("/"))
        metadata = {"numerator": numerator, "denominator": denominator,
                    "simplified_numerator": simple_numerator, "simplified_denominator": simple_denominator}
    entry = {"question": problem, "answer": gold, "metadata": metadata}
    return json.dumps({"task": task, "seed": 0, "index": 0, "options": {}, "entry": entry})


@pytest.mark.parametrize("source", sorted(prompts.FEW_SHOT_BY_SOURCE))
def test_every_task_set_is_keyed_by_a_procedural_tasks_source(source):
    # A misspelt key would never match a problem's source and silently fall back to the kind's set.
    task = source.removeprefix("procedural/")
    assert procedural.source_name(task) == source
    assert procedural.scorer_is_safe(task)  # LookupError for a task reasoning-gym lacks


@pytest.mark.parametrize("source", sorted(prompts.FEW_SHOT_BY_SOURCE))
def test_every_example_of_a_task_passes_the_filters_checks(source):
    """An example the filter would reject (format, length, steps, answer) teaches the model the rejected habit."""
    shots = prompts.FEW_SHOT_BY_SOURCE[source]
    golds = [_gold(source, problem) for problem, _, _ in shots]
    assert [answer for *_, answer in shots] == golds  # the answer written is the problem's answer
    # cpu-smoke's filter.*, as the filter stage checks traces; a long deadline: a busy machine's
    # slow math-verify start gives no verdict within 10 s, and a wait changes no verdict.
    verdicts = checks.judge([prompts.format_trace(reasoning, answer) for _, reasoning, answer in shots], golds,
                            [source] * len(shots), [_meta(source, p, g) for (p, _, _), g in zip(shots, golds)],
                            config=load_config("cpu-smoke").filter_stage(), deadline_s=120.0)
    assert [(v.reason, v.detail) for v in verdicts] == [(None, "")] * len(shots)


def test_the_checks_reject_a_wrong_example():
    # The check above can fail: a false step in an example of the same shape is caught.
    source = "procedural/basic_arithmetic"
    trace = prompts.format_trace("6 * 7 = 48.", "42")
    (verdict,) = checks.judge([trace], ["42"], [source], [_meta(source, "Calculate 6 * 7.", "42")],
                              config=load_config("cpu-smoke").filter_stage(), deadline_s=120.0)
    assert verdict.reason is checks.FilterReason.WRONG_STEP


def test_build_gives_a_procedural_task_its_own_examples_in_the_prompt_shape():
    prompt = prompts.build("Calculate 2 + 5.", "procedural/basic_arithmetic")
    shots = prompts.FEW_SHOT_BY_SOURCE["procedural/basic_arithmetic"]
    assert [m["content"] for m in prompt.messages if m["role"] == "user"] == [
        "Calculate 4 + 9.", "Calculate 3 - 8.", "Calculate 6 * 7.", "Calculate 2 + 5."]
    assert prompt.messages[2]["content"] == "<reasoning>\n4 + 9 = 13.\n</reasoning>\n<answer>\n13\n</answer>"
    worked = [line for p, r, a in shots for line in (f"Problem: {p}", f"Solution: {prompts.format_trace(r, a)}", "")]
    assert prompt.text == "\n".join([SYSTEM, "", *worked, "Problem: Calculate 2 + 5.", "Solution: <reasoning>\n"])
    assert prompt.text_prefix == "<reasoning>\n"


def test_basic_arithmetic_multiplies_two_terms_only():
    # The 270M model copied a 3-term example's "Multiplication comes first:" into + and - answers.
    products = [p for p, _, _ in prompts.FEW_SHOT_BY_SOURCE["procedural/basic_arithmetic"] if "*" in p]
    assert products == ["Calculate 6 * 7."]


@pytest.mark.parametrize(("source", "kind"), [
    ("procedural/gsm_symbolic", "word_problem"),  # a procedural task without its own set
    ("procedural/leg_counting", "arithmetic"),
    ("openai/gsm8k", "word_problem"),
    ("competition_math", "competition"),
])
def test_build_falls_back_to_the_kinds_examples_for_other_sources(source, kind):
    prompt = prompts.build("What is 2 + 5?", source)
    asked = [m["content"] for m in prompt.messages if m["role"] == "user"]
    assert asked == [p for p, _, _ in prompts.FEW_SHOT[kind]] + ["What is 2 + 5?"]


def test_template_version_changes_with_a_tasks_examples(monkeypatch):
    before = prompts.template_version()
    changed = (("Calculate 1 + 1.", "1 + 1 = 2.", "2"), *prompts.FEW_SHOT_BY_SOURCE["procedural/basic_arithmetic"][1:])
    monkeypatch.setitem(prompts.FEW_SHOT_BY_SOURCE, "procedural/basic_arithmetic", changed)
    assert prompts.template_version() != before
    monkeypatch.undo()
    assert prompts.template_version() == before
