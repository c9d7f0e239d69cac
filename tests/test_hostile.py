"""Hostile text cannot hang or crash a checker: every row and completion ends kept or rejected with a reason.

A small sample of benchmarks/hostile.py (which runs 100,000 texts), with generous time bounds:
the old patterns took seconds to hours on inputs like these (issue 29).
"""

from __future__ import annotations

import json
import time

import pytest

from curation import answers, pull, steps
from machinery.config import HubSource, PullConfig
from tests.conftest import write_jsonl
from tests.support import hostile

BOUND_S = 0.5  # per text and checker; the slowest measured is ~50 ms at 100 KB (benchmarks/hostile.py)


def _checkers() -> dict[str, object]:
    """Every checker of our own that reads one untrusted text."""
    found = {"extract": answers.extract, "plain_number": answers.plain_number,
             "boxed_contents": answers.boxed_contents, "format_problem": answers.format_problem,
             "steps.check": steps.check, "row checks": hostile.row_checks()}
    if hasattr(answers, "final_answer"):
        found["final_answer"] = answers.final_answer
    return found


def test_hostile_texts_finish_in_bounded_time_without_raising():
    slow, failed = [], []
    for kind, text in hostile.texts(250, seed=3, max_chars=30_000):
        for name, check in _checkers().items():
            started = time.process_time()  # CPU time: wall time swings with the shared machine's load
            try:
                check(text)
            except Exception as err:  # noqa: BLE001 - the test counts them
                failed.append((name, kind, len(text), repr(err)[:80]))
            took = time.process_time() - started
            if took > BOUND_S:
                slow.append((name, kind, len(text), round(took, 2)))
    assert not failed, failed[:5]
    assert not slow, slow[:5]


def test_hostile_gsm8k_rows_are_each_kept_or_rejected_with_a_reason(tmp_path):
    rows = hostile.gsm8k_rows()
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    started = time.monotonic()
    result = pull.pull(PullConfig(seed=1, sources=[HubSource(id="openai/gsm8k", data_files=str(path))]))
    assert time.monotonic() - started < 60
    assert result.stats.rows_in == len(rows) == result.kept.height + result.rejected.height
    assert result.rejected["reject_reason"].null_count() == 0
    reasons = dict(zip(result.rejected["source_id"], result.rejected["reject_reason"]))
    details = dict(zip(result.rejected["source_id"], result.rejected["reject_detail"]))
    assert reasons["train/0"] == "too_long" and details["train/0"].startswith("answer has 100000 characters")
    assert reasons["train/1"] == "too_long" and details["train/1"].startswith("solution has")
    assert reasons["train/2"] == "too_long" and details["train/2"].startswith("problem has")
    assert reasons["train/5"] == "unparsable_answer"
    assert reasons["train/6"] == "control_characters"
    assert result.kept.filter(result.kept["source_id"] == "train/10")["answer"].to_list() == ["4"]


def test_hostile_completions_through_the_filter_checks_and_the_rewards():
    from training.rewards import reward_fns

    completions = [text for _, text in hostile.texts(40, seed=5, max_chars=20_000)]
    completions += ["<reasoning>x</reasoning><answer>" + "\\boxed{" * 3_000 + "</answer>",
                    "<reasoning>" + "<answer>" * 10_000 + "</reasoning><answer>3</answer>",
                    "<reasoning>so</reasoning><answer>3 apples and oranges in the basket and the box;</answer>",
                    "<reasoning>so</reasoning><answer>" + "9" * (answers.MAX_COMPLETION_CHARS + 1) + "</answer>"]
    check = hostile.row_checks()
    started = time.monotonic()
    failures = [check(c) for c in completions]
    assert time.monotonic() - started < 10
    assert sum(f is not None for f in failures) >= len(completions) // 2  # most are not in the trace format
    n = len(completions)
    columns = {"gold": ["3"] * n, "source": ["openai/gsm8k"] * n, "meta": ["{}"] * n}
    started = time.monotonic()
    rewards = [fn([""] * n, completions, **columns) for fn in reward_fns()]
    assert time.monotonic() - started < 120  # one math-verify pool start, each item under its deadline
    assert all(len(r) == n and all(isinstance(x, float) for x in r) for r in rewards)
    assert rewards[-1][-1] == 0.0  # over the completion cap: never correct
    from curation import checks

    verdicts = checks.judge(completions, columns["gold"], columns["source"], columns["meta"])
    assert all(v.reason is None or v.detail for v in verdicts)  # kept, or rejected with a reason and evidence
    assert verdicts[-1].reason == "too_long" and verdicts[-1].detail.startswith(f"completion has {len(completions[-1])} characters")


def test_the_verifier_refuses_over_long_inputs_and_counts_them():
    from curation import verifier

    long_completion = "<reasoning>r</reasoning><answer>" + "1" * answers.MAX_COMPLETION_CHARS + "</answer>"
    long_answer = "<reasoning>r</reasoning><answer>" + "1" * (answers.MAX_ANSWER_CHARS + 1) + "</answer>"
    results, audit = verifier.verify([long_completion, long_answer, "<answer>3</answer>", "<answer>3</answer>"],
                                     ["1", "1", "3" * (answers.MAX_ANSWER_CHARS + 1), "3"], ["openai/gsm8k"] * 4,
                                     ["{}"] * 4)
    assert results == [False, False, False, True]
    assert (audit.too_long, audit.no_answer, audit.gold_unparsed) == (3, 0, 0)


def _crafted_meta(task: str, code: str) -> str:
    """A procedural meta whose answer, gold and metadata are all code, as a tampered run folder could hold."""
    return json.dumps({"task": task, "entry": {"question": "q", "answer": code,
                                                "metadata": {"problem": code, "numbers": [code]}}})


@pytest.mark.parametrize("task", ["spiral_matrix", "bitwise_arithmetic", "number_sorting"])
def test_a_crafted_meta_naming_an_eval_scorer_runs_no_code(task, tmp_path):
    from curation.sources import procedural

    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    assert procedural.scores([_crafted_meta(task, code)], [code]) == [None]
    assert not marker.exists()


def test_the_verifier_gives_no_verdict_for_a_meta_naming_an_unreviewed_scorer(tmp_path):
    from curation import verifier

    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    results, audit = verifier.verify([f"<answer>{code}</answer>"], [code], ["procedural/spiral_matrix"],
                                     [_crafted_meta("spiral_matrix", code)])
    assert results == [None] and audit.generator_unscored == 1
    assert not marker.exists()
