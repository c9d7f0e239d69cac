"""GRPO rewards: one verdict with the curation filter on 364 planted completions, and each reward alone."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from curation import checks, filters
from curation.checks import FilterReason
from curation.sources import procedural
from curation.teacher.prompts import format_trace
from machinery.config import FilterConfig
from machinery.schema import Problem, problem_id, problems_frame
from training import rewards

# Real arithmetic, all of it true, so the step check reads three claims in every trace built on it.
REASONING = "First, 12 + 30 = 42. Then 42 - 2 = 40. Half of it: 40 / 2 = 20. We check the result once more."
SLIP = REASONING.replace("42 - 2 = 40", "42 - 2 = 41")  # one false step, the final answer untouched
LOOP = " ".join(["we add 3 + 4 = 7 again"] * 20)
OTHER_LANGUAGE = "我们把这些数字加起来 12 + 30 = 42，然后得到答案。"


def _problems() -> pl.DataFrame:
    """Procedural problems (generator verdict matters) and Hub-style ones with LaTeX and comma golds."""
    frames = [procedural.load(task, 5, seed=3)[0]
              for task in ("basic_arithmetic", "chain_sum", "fraction_simplification")]
    hub = [("HuggingFaceH4/MATH-500", "\\frac{3}{4}"), ("HuggingFaceH4/MATH-500", "2\\sqrt{2}"),
           ("HuggingFaceH4/MATH-500", "\\frac{1}{6}"), ("openai/gsm8k", "1080"), ("openai/gsm8k", "72")]
    records = [Problem(id=problem_id(source, str(i)), source=source, source_id=str(i), problem=f"Question {i}?",
                       answer=gold, solution=None, meta="{}") for i, (source, gold) in enumerate(hub)]
    return pl.concat([*frames, problems_frame(records)])


def _integer(gold: str) -> int | None:
    return int(gold) if re.fullmatch(r"-?\d+", gold) else None


def _fraction(gold: str) -> tuple[int, int] | None:
    found = re.findall(r"\d+", gold)
    return (int(found[0]), int(found[1])) if len(found) == 2 and ("/" in gold or "frac" in gold) else None


def _variants(gold: str, source: str) -> dict[str, tuple[str, str] | None]:
    """Named completion kinds for one problem: (completion, finish_reason), None where not applicable."""
    number, fraction = _integer(gold), _fraction(gold)
    full = format_trace(REASONING, gold)
    cut = full[: full.index("</answer>") - 2]
    return {
        "correct": (full, "stop"),
        "wrong_number": (format_trace(REASONING, str(number + 1) if number is not None else "987654"), "stop"),
        "missing_tags": (f"{REASONING} The answer is {gold}.", "stop"),
        "answer_tag_only": (f"<answer>{gold}</answer>", "stop"),
        "truncated": (cut, "length"),
        "two_answers": (full + f"\n<answer>\n{gold}1\n</answer>", "stop"),
        "two_same_answers": (full + f"\n<answer>\n{gold}\n</answer>", "stop"),
        "boxed_in_answer": (format_trace(REASONING, f"\\boxed{{{gold}}}"), "stop"),
        "text_outside": (full + " Hope this helps!", "stop"),
        "out_of_order": (f"<answer>\n{gold}\n</answer>\n<reasoning>\n{REASONING}\n</reasoning>", "stop"),
        "empty_answer": (format_trace(REASONING, " "), "stop"),
        "empty_reasoning": (f"<reasoning></reasoning>\n<answer>{gold}</answer>", "stop"),
        "latex_fraction": (format_trace(REASONING, f"\\frac{{{fraction[0]}}}{{{fraction[1]}}}"), "stop")
        if fraction else None,
        "slash_fraction": (format_trace(REASONING, f"{fraction[0]}/{fraction[1]}"), "stop") if fraction else None,
        # math-verify takes an unreduced fraction as equal; the generator does not.
        "unreduced_fraction": (format_trace(REASONING, f"{2 * fraction[0]}/{2 * fraction[1]}"), "stop")
        if fraction else None,
        # Equal as numbers, but basic_arithmetic gives "-4.0" for "-4" only partial credit.
        "trailing_decimal": (format_trace(REASONING, f"{number}.0"), "stop") if number is not None else None,
        "thousands_comma": (format_trace(REASONING, f"{number:,}"), "stop") if number is not None else None,
        "dollar_sign": (format_trace(REASONING, f"${number}"), "stop") if number is not None else None,
        "decimal_value": (format_trace(REASONING, f"{fraction[0] / fraction[1]:.6f}"), "stop") if fraction else None,
        "false_step": (format_trace(SLIP, gold), "stop"),
        "loop": (format_trace(LOOP, gold), "stop"),
        "other_language": (format_trace(OTHER_LANGUAGE, gold), "stop"),
    }


def _sample() -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Every (problem, completion kind) pair that applies: problems, generations, kinds."""
    problems = _problems()
    chosen = []
    for pid, gold, source in problems.select("id", "answer", "source").iter_rows():
        for kind, made in _variants(gold, source).items():
            if made is not None:
                chosen.append((pid, kind, *made))
    generations = pl.DataFrame(
        [{"problem_id": p, "sample_idx": i, "completion": text, "finish_reason": finish, "completion_tokens": None}
         for i, (p, _, text, finish) in enumerate(chosen)],
        schema={"problem_id": pl.String, "sample_idx": pl.Int32, "completion": pl.String,
                "finish_reason": pl.String, "completion_tokens": pl.Int32})
    return problems, generations, [kind for _, kind, _, _ in chosen]


# The filter's bounds, less its token lengths (the reward lifts those for rollouts: tested below);
# best-of-N and near-identical traces drop traces that passed every check, so their reasons count as kept.
CONFIG = FilterConfig(min_tokens=0)
KEPT_BY_THE_CHECKS = {None, FilterReason.NEAR_DUPLICATE_TRACE.value, FilterReason.BEST_OF_N_SURPLUS.value}


@pytest.fixture(scope="module")
def judged():
    """The planted completions, the filter stage's reason for each, and the correctness reward for each."""
    problems, generations, kinds = _sample()
    result = filters.filter_traces(generations, problems, CONFIG)
    reasons = dict(zip(result.rejected["sample_idx"].to_list(), result.rejected["reject_reason"].to_list()))
    facts = generations.join(problems.select(pl.col("id").alias("problem_id"), "answer", "source", "meta"),
                             on="problem_id", how="left", maintain_order="left")
    reward = rewards.reward_fns(CONFIG)[2](
        prompts=["p"] * facts.height, completions=facts["completion"].to_list(),
        gold=facts["answer"].to_list(), source=facts["source"].to_list(), meta=facts["meta"].to_list())
    return facts, kinds, [reasons.get(i) for i in facts["sample_idx"].to_list()], reward


def test_sample_covers_every_kind_of_completion(judged):
    facts, kinds, _, _ = judged
    assert facts.height == 364
    assert set(kinds) == set(_variants("3/4", "x")) | set(_variants("3", "x"))
    assert facts["source"].str.starts_with("procedural/").sum() > 100


def test_correctness_reward_equals_the_filter_verdict_on_every_completion(judged):
    facts, kinds, reasons, reward = judged
    for i, (kind, reason, value) in enumerate(zip(kinds, reasons, reward)):
        assert (value == rewards.CORRECT_REWARD) == (reason in KEPT_BY_THE_CHECKS), (
            f"row {i} ({kind}): filter reason {reason!r}, reward {value}: {facts['completion'][i]!r}")
    assert 0.2 < sum(r > 0 for r in reward) / len(reward) < 0.8  # both verdicts are well represented


@pytest.mark.parametrize(("kind", "reason"), [("false_step", "wrong_step"), ("loop", "repetitive"),
                                            ("other_language", "wrong_language")])
def test_a_right_answer_after_a_rejected_trace_earns_nothing_for_the_same_reason(judged, kind, reason):
    _, kinds, reasons, reward = judged
    found = [(r, v) for k, r, v in zip(kinds, reasons, reward) if k == kind]
    assert found and all(r == reason and v == 0.0 for r, v in found)


def test_generator_verdict_counts_for_procedural_sources(judged):
    facts, kinds, reasons, reward = judged
    checked = 0
    for i, kind in enumerate(kinds):
        source = facts["source"][i]
        # math-verify says equal to all of these; the generators give partial credit or none.
        if ((kind == "unreduced_fraction" and source.startswith("procedural/"))
                or (kind == "trailing_decimal" and source == "procedural/basic_arithmetic")
                or (kind == "thousands_comma" and source == "procedural/basic_arithmetic"
                    and abs(int(facts["answer"][i])) >= 1000)):  # chain_sum's generator takes "3,037"
            assert reward[i] == 0.0 and reasons[i] == "wrong_answer", (kind, source)
            checked += 1
    assert checked >= 5


def _rewards_of(judged, kind: str, *, hub_only: bool = False) -> list[float]:
    facts, kinds, _, reward = judged
    return [r for k, s, r in zip(kinds, facts["source"], reward)
            if k == kind and not (hub_only and s.startswith("procedural/"))]


@pytest.mark.parametrize("kind", ["correct", "boxed_in_answer", "latex_fraction", "slash_fraction"])
def test_right_answers_in_the_format_are_correct(judged, kind):
    found = _rewards_of(judged, kind)
    assert found and all(r == 1.0 for r in found)


@pytest.mark.parametrize("kind", ["thousands_comma", "dollar_sign", "decimal_value", "unreduced_fraction"])
def test_equal_values_written_otherwise_are_correct_for_hub_sources(judged, kind):
    found = _rewards_of(judged, kind, hub_only=True)
    assert found and all(r == 1.0 for r in found)


@pytest.mark.parametrize("kind", ["wrong_number", "missing_tags", "answer_tag_only", "truncated", "two_answers",
                                  "two_same_answers", "text_outside", "out_of_order", "empty_answer",
                                  "empty_reasoning", "false_step", "loop", "other_language"])
def test_wrong_or_malformed_completions_are_not_correct(judged, kind):
    found = _rewards_of(judged, kind)
    assert found and all(r == 0.0 for r in found)


def test_format_reward_only_for_the_exact_format():
    good = format_trace(REASONING, "7")
    completions = [good, good + " extra", "<answer>7</answer>", "", good.replace("</reasoning>", "")]
    assert rewards.format_reward(["p"] * 5, completions) == [rewards.FORMAT_REWARD, 0.0, 0.0, 0.0, 0.0]


def test_partial_format_reward_counts_tags_that_appear_once():
    good = format_trace(REASONING, "7")
    completions = [good, "<answer>7</answer>", good + "<answer>8</answer>", "no tags", ""]
    tag = rewards.PARTIAL_TAG_REWARD
    assert rewards.partial_format_reward(["p"] * 5, completions) == [4 * tag, 2 * tag, 2 * tag, 0.0, 0.0]


def test_correctness_reward_reads_numpy_kwargs_and_ignores_extra_ones():
    completions = [format_trace(REASONING, "1,080"), format_trace(REASONING, "1081"), "1080"]
    got = rewards.correctness_reward(["p"] * 3, completions, gold=np.array(["1080"] * 3),
                                     source=np.array(["openai/gsm8k"] * 3), mode="train", problem_id=["a", "b", "c"])
    assert got == [1.0, 0.0, 0.0]


def test_correctness_reward_names_a_missing_column():
    with pytest.raises(KeyError, match="'gold'"):
        rewards.correctness_reward(["p"], ["x"], source=["openai/gsm8k"])


def test_procedural_source_without_meta_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="procedural/chain_sum"):
        rewards.correctness_reward(["p"], [format_trace(REASONING, "3")], gold=["3"], source=["procedural/chain_sum"])


def test_rewards_plug_into_tunix_reward_manager():
    from tunix.rl.grpo.grpo_learner import GRPOConfig
    from tunix.rl.reward_manager import SequenceRewardManager

    manager = SequenceRewardManager(rewards.reward_fns(), GRPOConfig(num_generations=2))
    completions = [format_trace(REASONING, "1080"), "1080"]
    out = manager(prompts=["p", "p"], completions=completions, gold=np.array(["1080", "1080"]),
                  source=np.array(["openai/gsm8k"] * 2), mode="train")
    full = rewards.FORMAT_REWARD + 4 * rewards.PARTIAL_TAG_REWARD + rewards.CORRECT_REWARD
    assert list(out["rewards"]) == [full, 0.0]


def test_the_teachers_token_length_bounds_do_not_bind_rollouts():
    """A right rollout outside filter.min_tokens/max_tokens is paid; the filter's own checks reject it."""
    bounded = FilterConfig(min_tokens=30, max_tokens=40)
    short = format_trace("12 + 30 = 42.", "42")  # ~12 tokens by the 4-characters estimate
    long = format_trace(" ".join([REASONING] * 2), "42")  # ~56
    texts, golds, sources = [short, long], ["42"] * 2, ["openai/gsm8k"] * 2
    said = checks.judge(texts, golds, sources, None, config=bounded)
    assert [v.reason for v in said] == [FilterReason.TOO_SHORT, FilterReason.TOO_LONG]
    assert rewards.reward_fns(bounded)[2](["p"] * 2, texts, gold=golds, source=sources) == [1.0, 1.0]


def test_the_runs_filter_bounds_reach_the_correctness_reward():
    texts, kwargs = [format_trace(SLIP, "20"), format_trace(REASONING, "20")], {"gold": ["20"] * 2,
                                                                             "source": ["openai/gsm8k"] * 2}
    assert rewards.reward_fns(FilterConfig())[2](["p"] * 2, texts, **kwargs) == [0.0, 1.0]
    assert rewards.reward_fns(FilterConfig(check_steps=False))[2](["p"] * 2, texts, **kwargs) == [1.0, 1.0]


def test_the_grpo_key_follows_the_bounds_the_reward_reads_and_no_others():
    base = rewards.settings(FilterConfig())
    assert rewards.settings(FilterConfig(check_steps=False)) != base
    assert rewards.settings(FilterConfig(min_latin_share=0.5)) != base
    assert rewards.settings(FilterConfig(keep_per_problem=7, similar_threshold=0.5, max_tokens=99)) == base
