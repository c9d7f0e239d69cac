"""One verdict: the filter stage, the GRPO reward and the eval keep and drop the same completions.

Each side runs its own entry point (`filters.filter_traces` on a frame, the reward as Tunix
calls it, the eval's scorer) over the same planted completions, and all must agree with
`curation.checks.judge`.
"""

from __future__ import annotations

import polars as pl

from curation import checks, filters
from curation.checks import FilterReason
from curation.teacher.prompts import format_trace
from machinery.config import FilterConfig
from machinery.schema import Problem, problem_id, problems_frame
from training import rewards

SOURCE = "openai/gsm8k"
GOLD = "20"
RIGHT = "First, 12 + 30 = 42. Then 42 - 2 = 40. Half of it: 40 / 2 = 20. So the answer is 20."
# The twin of RIGHT with one false step and the same right final answer.
SLIP = RIGHT.replace("42 - 2 = 40", "42 - 2 = 41")
# The filter's bounds that both sides read; min_tokens=0 because the reward lifts the token lengths.
CONFIG = FilterConfig(min_tokens=0, keep_per_problem=10)

PLANTED = {
    "right": format_trace(RIGHT, GOLD),
    "wrong_answer": format_trace(RIGHT, "21"),
    "bad_format": f"{RIGHT} The answer is {GOLD}.",
    "false_step": format_trace(SLIP, GOLD),
    "repetitive": format_trace(" ".join(["we add 3 + 4 = 7 again"] * 20), GOLD),
    "other_language": format_trace("我们把这些数字加起来 12 + 30 = 42，然后得到答案。", GOLD),
}


def _filter_reasons(texts: list[str]) -> list[str | None]:
    """The filter stage's reason for each text, each on a problem of its own (no best-of-N, no near-duplicates)."""
    records = [Problem(id=problem_id(SOURCE, str(i)), source=SOURCE, source_id=str(i), problem=f"Question {i}?",
                       answer=GOLD, solution=None, meta="{}") for i in range(len(texts))]
    problems = problems_frame(records)
    generations = pl.DataFrame(
        [{"problem_id": p.id, "sample_idx": 0, "completion": text, "finish_reason": "stop", "completion_tokens": None}
         for p, text in zip(records, texts)],
        schema={"problem_id": pl.String, "sample_idx": pl.Int32, "completion": pl.String,
                "finish_reason": pl.String, "completion_tokens": pl.Int32})
    result = filters.filter_traces(generations, problems, CONFIG)
    assert result.kept.height + result.rejected.height == len(texts)
    reasons = dict(zip(result.rejected["problem_id"].to_list(), result.rejected["reject_reason"].to_list()))
    return [reasons.get(p.id) for p in records]


def _correctness(texts: list[str]) -> list[float]:
    """The correctness reward under CONFIG, called as Tunix calls it."""
    correctness = rewards.reward_fns(CONFIG)[2]
    return correctness(prompts=["p"] * len(texts), completions=texts, gold=[GOLD] * len(texts),
                       source=[SOURCE] * len(texts), mode="train")


def test_a_false_step_before_the_right_answer_is_wrong_step_for_the_filter_and_unpaid_by_the_reward():
    texts = [PLANTED["false_step"], PLANTED["right"]]
    assert _filter_reasons(texts) == [FilterReason.WRONG_STEP.value, None]
    assert _correctness(texts) == [0.0, rewards.CORRECT_REWARD]
    slip, twin = checks.judge(texts, [GOLD] * 2, [SOURCE] * 2, None, config=CONFIG)
    assert (slip.reason, slip.detail, slip.formatted) == (FilterReason.WRONG_STEP, "false: 42 - 2 = 41", True)
    assert twin == checks.Verdict(reason=None, detail="", formatted=True)
    totals = [sum(fn(["p"] * 2, texts, gold=[GOLD] * 2, source=[SOURCE] * 2)[i] for fn in rewards.reward_fns(CONFIG))
              for i in range(2)]
    assert totals[0] < totals[1]  # the format rewards still pay the slip, the correctness reward does not


def test_planted_completions_are_kept_and_dropped_alike_by_filter_reward_and_checks():
    kinds, texts = list(PLANTED), list(PLANTED.values())
    reasons, paid = _filter_reasons(texts), _correctness(texts)
    said = checks.judge(texts, [GOLD] * len(texts), [SOURCE] * len(texts), None, config=checks.rollout_config(CONFIG))
    assert dict(zip(kinds, reasons)) == {"right": None, "wrong_answer": "wrong_answer", "bad_format": "bad_format",
                                         "false_step": "wrong_step", "repetitive": "repetitive",
                                         "other_language": "wrong_language"}
    assert [v.reason for v in said] == [None if r is None else FilterReason(r) for r in reasons]
    assert [(p == rewards.CORRECT_REWARD) for p in paid] == [r is None for r in reasons]


# --- The eval's side (training/evaluate.py, strict accuracy) ----------------------------------
# The eval scores with `checks.judge`; its tests of the same PLANTED completions go here, asserting
# that a completion counts towards strict accuracy exactly when `_filter_reasons` keeps it.



def test_eval_counts_strict_accuracy_exactly_where_the_filter_keeps_and_answer_accuracy_by_the_answer():
    from machinery.config import Config, ProceduralSource
    from training import evaluate

    kinds, texts = list(PLANTED), list(PLANTED.values())
    reasons = _filter_reasons(texts)
    ids = [f"p{i}" for i in range(len(texts))]
    rows = pl.DataFrame({"problem_id": ids, "source": [SOURCE] * len(texts), "gold": [GOLD] * len(texts),
                         "completion": texts, "completion_tokens": [None] * len(texts)},
                        schema_overrides={"completion_tokens": pl.Int32})
    problems = pl.DataFrame({"problem_id": ids, "meta": [None] * len(texts)}, schema_overrides={"meta": pl.String})
    config = Config(sources=[ProceduralSource(task="chain_sum")], filter=CONFIG)
    scored = evaluate.score(rows, problems, config)
    assert scored["verdict"].to_list() == reasons
    assert scored["strict"].to_list() == [r is None for r in reasons]
    assert scored["formatted"].to_list() == [r != "bad_format" for r in reasons]
    # Answer accuracy forgives the format and the steps, never the answer itself.
    assert dict(zip(kinds, scored["answer_correct"])) == {
        "right": True, "wrong_answer": False, "bad_format": True, "false_step": True, "repetitive": True,
        "other_language": True}
