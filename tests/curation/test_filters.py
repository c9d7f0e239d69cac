"""Trace filters: every rejected trace keeps its reason; best-of-N; pass rates; one verifier."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest

from curation import answers, checks, filters, verifier
from curation.checks import FilterReason
from curation.sources import procedural
from curation.teacher.prompts import format_trace
from machinery.config import FilterConfig

REASONING = "We add the numbers one at a time and check the sum twice to be sure it is right."


def _problems() -> pl.DataFrame:
    kept, _ = procedural.load("basic_arithmetic", 3, seed=1)
    return kept


def _generations(problems: pl.DataFrame, traces: list[tuple[int, str, str]]) -> pl.DataFrame:
    """traces: (problem row, completion, finish_reason)."""
    ids = problems["id"].to_list()
    rows = [{"problem_id": ids[p], "sample_idx": i, "completion": text, "finish_reason": finish,
             "completion_tokens": None} for i, (p, text, finish) in enumerate(traces)]
    return pl.DataFrame(rows, schema={"problem_id": pl.String, "sample_idx": pl.Int32, "completion": pl.String,
                                      "finish_reason": pl.String, "completion_tokens": pl.Int32})


def test_each_failure_has_its_reason_and_nothing_is_dropped():
    problems = _problems()
    gold = problems["answer"].to_list()
    wrong = str(int(gold[0]) + 1)
    traces = [
        (0, format_trace(REASONING, gold[0]), "stop"),  # kept
        (0, format_trace(REASONING, gold[0]), "length"),  # truncated
        (0, f"The answer is {gold[0]}", "stop"),  # no tags
        (0, format_trace(REASONING, wrong), "stop"),  # wrong answer
        (0, format_trace(" ".join(["add one more"] * 40), gold[0]), "stop"),  # degenerate loop
        (0, format_trace("我们把这些数字加起来然后得到答案，再检查一遍结果是否正确。", gold[0]), "stop"),  # language
        (0, format_trace("ok", gold[0]), "stop"),  # too short
        (1, format_trace(REASONING, gold[1]) + " and more", "stop"),  # text outside the blocks
    ]
    result = filters.filter_traces(_generations(problems, traces), problems, FilterConfig(min_tokens=16))
    assert result.kept.height + result.rejected.height == len(traces)
    by_sample = dict(zip(result.rejected["sample_idx"].to_list(), result.rejected["reject_reason"].to_list()))
    assert by_sample == {1: "truncated", 2: "bad_format", 3: "wrong_answer", 4: "repetitive",
                         5: "wrong_language", 6: "too_short", 7: "bad_format"}
    assert result.kept["sample_idx"].to_list() == [0]
    assert result.rejected.filter(pl.col("sample_idx") == 3)["reject_detail"][0] == (
        f"answered {wrong!r}, gold {gold[0]!r}")


def test_best_of_n_keeps_k_shortest_distinct_traces_and_records_pass_rates():
    problems = _problems()
    gold = problems["answer"][0]
    long_reasoning = " ".join(f"step {i} checks the partial sum again" for i in range(12))
    traces = [
        (0, format_trace(long_reasoning, gold), "stop"),
        (0, format_trace(REASONING, gold), "stop"),
        (0, format_trace(REASONING, gold), "stop"),  # identical to the one before
        (0, format_trace("First add, then verify the result by subtracting it back.", gold), "stop"),
        (1, format_trace(REASONING, "-999999"), "stop"),
    ]
    result = filters.filter_traces(_generations(problems, traces), problems, FilterConfig(keep_per_problem=2))
    reasons = dict(zip(result.rejected["sample_idx"].to_list(), result.rejected["reject_reason"].to_list()))
    assert reasons == {0: "best_of_n_surplus", 2: "near_duplicate_trace", 4: "wrong_answer"}
    assert sorted(result.kept["sample_idx"].to_list()) == [1, 3]
    rates = dict(zip(*result.extra["pass_rates"].select("problem_id", "pass_rate").to_dict(as_series=False).values()))
    ids = problems["id"].to_list()
    assert rates == {ids[0]: 1.0, ids[1]: 0.0, ids[2]: None}
    assert result.kept["pass_rate"].to_list() == [1.0, 1.0]
    assert result.stats.problems == 3 and result.stats.problems_with_a_trace == 1


def test_a_pathological_answer_costs_one_deadline_and_the_rest_still_get_verdicts():
    problems = pl.DataFrame({"id": ["p", "q"], "problem": ["?"] * 2, "source": ["test"] * 2,
                             "answer": ["5", "\\frac{1}{2}"],
                             "meta": ["{}"] * 2})
    # sympy does not finish 9^(9^(9^9)) (measured: no verdict after 5 s); 2/4 needs sympy too.
    traces = _generations(problems, [(0, format_trace(REASONING, "9^{9^{9^9}}"), "stop"),
                                     (1, format_trace(REASONING, "2/4"), "stop")])
    started = time.monotonic()
    result = filters.filter_traces(traces, problems, FilterConfig(check_deadline_s=3))
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 30  # it waited out the deadline, and only about that
    stalled = result.rejected.row(0, named=True)
    assert (stalled["sample_idx"], stalled["reject_reason"]) == (0, "unverifiable")
    assert stalled["reject_detail"] == "no verdict within the deadline"
    assert result.kept["sample_idx"].to_list() == [1]  # checked in a fresh pool after the stall


@pytest.mark.parametrize(("text", "problem"), [
    (format_trace("r", "1"), None),
    ("<reasoning>r</reasoning><answer>1</answer><answer>2</answer>", "needs each tag exactly once"),
    ("<answer>1</answer><reasoning>r</reasoning>", "out of order"),
    ("<reasoning> </reasoning><answer>1</answer>", "empty reasoning"),
    ("", "empty completion"),
])
def test_format_check(text, problem):
    found = answers.format_problem(text)
    assert found == problem if problem is None else problem in found


def test_procedural_answers_also_need_the_generators_full_score():
    kept, _ = procedural.load("fraction_simplification", 40, seed=2)
    row = next(r for r in kept.iter_rows(named=True) if "/" in r["answer"] and "frac" not in r["answer"])
    meta = json.loads(row["meta"])["entry"]["metadata"]
    unreduced = f"{meta['numerator']}/{meta['denominator']}"  # the same value, not simplified
    completions = [format_trace(REASONING, row["answer"]), format_trace(REASONING, unreduced)]
    assert answers.is_equivalent(unreduced, row["answer"])  # math-verify alone would accept it
    assert verifier.verdicts(completions, [row["answer"]] * 2, [row["source"]] * 2, [row["meta"]] * 2) == [True, False]


def test_a_trace_with_a_false_step_leaves_as_wrong_step_with_the_claim():
    problems = _problems()
    gold = problems["answer"][0]
    slip = f"We divide both by 6: 60 / 6 = 10 and 57 / 6 = 15. So we get {gold}."
    traces = [(0, format_trace(slip, gold), "stop"), (0, format_trace(REASONING, gold), "stop")]
    result = filters.filter_traces(_generations(problems, traces), problems, FilterConfig(min_tokens=1))
    assert result.rejected.select("sample_idx", "reject_reason", "reject_detail").rows() == [
        (0, "wrong_step", "false: 57 / 6 = 15")]
    assert result.kept["sample_idx"].to_list() == [1]
    audit = result.stats.audit
    assert (audit["step_claims_checked"], audit["traces_with_false_steps"]) == (2, 1)  # 60/6=10 true, 57/6=15 false
    unchecked = filters.filter_traces(_generations(problems, traces), problems,
                                      FilterConfig(min_tokens=1, check_steps=False))
    assert unchecked.rejected.is_empty() and "step_claims_checked" not in unchecked.stats.audit


def test_stats_keep_two_examples_per_reject_reason_with_their_evidence():
    problems = _problems()
    gold = problems["answer"].to_list()
    traces = [(p, format_trace(REASONING, str(int(gold[p]) + 1)), "stop") for p in range(3)]
    traces += [(0, "no tags at all", "stop")]
    result = filters.filter_traces(_generations(problems, traces), problems, FilterConfig(min_tokens=1))
    shown = result.stats.examples
    assert sorted(shown) == ["bad_format", "wrong_answer"] and len(shown["wrong_answer"]) == 2
    first = shown["wrong_answer"][0]
    assert first["detail"].startswith("answered ") and first["excerpt"].startswith("<reasoning>")
    assert shown["bad_format"][0]["detail"].startswith("needs each tag exactly once")


# The list of single-completion checks (`curation.checks`) that the filter, the reward and the eval share.

ARITHMETIC = "First, 12 + 30 = 42. Then 42 - 2 = 40. Half of it: 40 / 2 = 20. We check the result once more."


def _rows(texts: list[str], gold: str = "20") -> list[checks.Row]:
    return checks.rows_of(texts, [gold] * len(texts), ["openai/gsm8k"] * len(texts), None)


def test_a_completion_leaves_at_its_first_failure_in_list_order():
    loop = " ".join(["we add 3 + 4 = 8 again"] * 20)  # repetitive, and every step false
    texts = [f"{loop} 20", format_trace(loop, "21"), format_trace(ARITHMETIC.replace("= 40", "= 41"), "21")]
    found = checks.first_failures(_rows(texts), checks.Context(config=FilterConfig()))
    assert [f.reason for f in found] == ["bad_format", "repetitive", "wrong_step"]


def test_a_batch_check_sees_only_the_rows_still_alive_and_counts_them():
    texts = ["no tags", format_trace(ARITHMETIC, "20"), format_trace(ARITHMETIC.replace("= 40", "= 41"), "20")]
    context = checks.Context(config=FilterConfig())
    checks.first_failures(_rows(texts), context)
    assert (context.counts["step_claims_checked"], context.counts["traces_with_false_steps"]) == (6, 1)
    assert context.counts["checked"] == 1  # math-verify read the one trace that passed everything before it


def test_a_new_check_is_one_entry():
    def bananas(row: checks.Row, config: FilterConfig) -> str | None:
        return "mentions bananas" if "banana" in row.text else None

    entries = (*checks.CHECKS, checks.per_text(FilterReason.JUDGE_REJECTED, bananas))
    texts = [format_trace(ARITHMETIC + " Like a banana.", "20"), format_trace(ARITHMETIC, "20")]
    found = checks.first_failures(_rows(texts), checks.Context(config=FilterConfig()), entries)
    assert found == [checks.Failure(FilterReason.JUDGE_REJECTED, "mentions bananas"), None]


def test_a_check_that_gives_a_reason_it_did_not_declare_is_an_error():
    wrong = checks.Check((FilterReason.TOO_LONG,), lambda rows, context: [checks.Failure(FilterReason.BAD_FORMAT, "")])
    with pytest.raises(RuntimeError, match="rejected row 0 as"):
        checks.first_failures(_rows(["x"]), checks.Context(config=FilterConfig()), (wrong,))


def test_judge_estimates_missing_token_counts_from_the_text():
    text = format_trace(ARITHMETIC, "20")  # 141 characters: 35 tokens at 4 characters a token
    said = checks.judge([text] * 3, ["20"] * 3, ["openai/gsm8k"] * 3, None, config=FilterConfig(min_tokens=30),
                        tokens=[None, 12, 300])
    assert [v.reason for v in said] == [None, FilterReason.TOO_SHORT, None]
    assert said[1].detail == "12 tokens < 30"


def test_judge_names_what_is_missing():
    with pytest.raises(ValueError, match="1 completions, 2 golds"):
        checks.judge(["x"], ["1", "2"], ["openai/gsm8k"], None)
    with pytest.raises(ValueError, match="procedural/chain_sum"):
        checks.judge(["x"], ["1"], ["procedural/chain_sum"], [None])
