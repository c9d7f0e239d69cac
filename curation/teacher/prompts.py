"""The teacher's instructions and few-shot examples, per procedural task or else per kind of source.

Base models never produce the tags without examples (tried on Gemma 3 270M), so every
prompt carries three worked examples in the exact output format:
`<reasoning>...</reasoning>\n<answer>...</answer>`. A procedural task gets examples in its
generator's own wording (`FEW_SHOT_BY_SOURCE`); any other source those of its kind (`FEW_SHOT`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from curation.teacher import Prompt
from machinery.formats import SYSTEM

OPEN = "<reasoning>\n"  # base-model prompts open the reasoning block for the model
# A base model goes on to invent the next problem after its answer: stop it there.
COMPLETION_STOPS = ("\nProblem:",)

Kind = Literal["arithmetic", "word_problem", "competition"]
Shot = tuple[str, str, str]  # (problem, reasoning, answer)

# The fallback: one set per kind of source.
FEW_SHOT: dict[Kind, tuple[Shot, ...]] = {
    "arithmetic": (
        ("Calculate 12 + 7 * 3.", "Multiplication comes first: 7 * 3 = 21. Then 12 + 21 = 33.", "33"),
        ("State the final answer to the following arithmetic problem: 45 - 18 + 6 =",
         "Left to right: 45 - 18 = 27. Then 27 + 6 = 33.", "33"),
        ("Simplify the fraction 18/24 to its lowest terms.",
         "The greatest common divisor of 18 and 24 is 6. 18 / 6 = 3 and 24 / 6 = 4.", "3/4"),
    ),
    "word_problem": (
        ("Tom has 5 apples. He buys 3 bags with 4 apples each. How many apples does he have now?",
         "The bags hold 3 * 4 = 12 apples. Together with his 5 apples he has 5 + 12 = 17.", "17"),
        ("A shirt costs $20 and is on sale for 25% off. How much does it cost on sale?",
         "25% of $20 is 0.25 * 20 = $5. The sale price is 20 - 5 = $15.", "15"),
        ("Sara reads 12 pages a day. How many days does she need for a 96-page book?",
         "She needs 96 / 12 = 8 days.", "8"),
    ),
    "competition": (
        ("What is the value of $\\frac{2}{3} + \\frac{1}{6}$?",
         "Over a common denominator, $\\frac{4}{6} + \\frac{1}{6} = \\frac{5}{6}$.", "\\frac{5}{6}"),
        ("Solve for $x$: $3x - 7 = 11$.", "Add 7 to both sides: $3x = 18$, so $x = 6$.", "6"),
        ("How many positive divisors does 12 have?",
         "$12 = 2^2 \\cdot 3$, so it has $(2+1)(1+1) = 6$ divisors.", "6"),
    ),
}


# Per procedural task, keyed by its `source` column, in the generator's own phrasing. Measured on
# Gemma 3 270M at cpu-smoke's teacher settings (benchmarks/taskmix.py, 8 problems x 4 samples each of
# basic_arithmetic and chain_sum): 15 of 64 samples kept against 3 of 64 with the arithmetic kind's set,
# whose fraction example 25-34% of completions copied into sums ("The greatest common divisor of 1 - 8
# and 1 is ..."). The product is a 2-term one: the model copies a 3-term example's "Multiplication comes
# first:" into `+`/`-` answers. gsm_symbolic keeps the word-problem set. A test runs every example
# through the filter's checks: an example the filter would reject teaches the rejected habit.
FEW_SHOT_BY_SOURCE: dict[str, tuple[Shot, ...]] = {
    "procedural/basic_arithmetic": (
        ("Calculate 4 + 9.", "4 + 9 = 13.", "13"),
        ("Calculate 3 - 8.", "3 - 8 = -5.", "-5"),
        ("Calculate 6 * 7.", "6 * 7 = 42.", "42"),
    ),
    "procedural/chain_sum": (
        ("State the final answer to the following arithmetic problem: 5 + 8 =", "5 + 8 = 13.", "13"),
        ("State the final answer to the following arithmetic problem: 2 - 9 =", "2 - 9 = -7.", "-7"),
        ("State the final answer to the following arithmetic problem: 14 + 6 - 23 =",
         "Left to right: 14 + 6 = 20. Then 20 - 23 = -3.", "-3"),
    ),
    "procedural/fraction_simplification": (
        ("Simplify the fraction 12/18 to its lowest terms. Give only the simplified fraction as your final answer.",
         "The greatest common divisor of 12 and 18 is 6. 12 / 6 = 2 and 18 / 6 = 3.", "2/3"),
        (("Simplify the fraction $\\dfrac{10}{25}$ to its lowest terms. Give only the simplified fraction as your "
          "final answer."), "The greatest common divisor of 10 and 25 is 5. 10 / 5 = 2 and 25 / 5 = 5.", "2/5"),
        ("Simplify the fraction $15/35$ to its lowest terms. Give only the simplified fraction as your final answer.",
         "The greatest common divisor of 15 and 35 is 5. 15 / 5 = 3 and 35 / 5 = 7.", "3/7"),
    ),
    "procedural/simple_equations": (
        ("Determine the value of x that satisfies: x + 7 = 12", "Subtract 7 from both sides: x = 12 - 7 = 5.", "5"),
        ("Solve for y: 10 - y = 4", "Move y to the right and 4 to the left: y = 10 - 4 = 6.", "6"),
        ("Find the value of k in the equation: 3*k - 4 = 11",
         "Add 4 to both sides: 3*k = 11 + 4 = 15. Divide by 3: k = 15 / 3 = 5.", "5"),
    ),
}


def kind_of(source: str) -> Kind:
    """The kind of a problem's source: which `FEW_SHOT` set it falls back to."""
    if source.startswith("procedural/") and "gsm" not in source:
        return "arithmetic"
    if source in ("openai/gsm8k",) or "gsm" in source:
        return "word_problem"
    return "competition"


def format_trace(reasoning: str, answer: str) -> str:
    """The output format the filters and the GRPO reward check."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


def shots_for(source: str) -> tuple[Shot, ...]:
    """The worked examples for a problem's source: its task's own if it has a set, else its kind's."""
    return FEW_SHOT_BY_SOURCE.get(source) or FEW_SHOT[kind_of(source)]


def build(problem: str, source: str) -> Prompt:
    """The prompt for one problem: chat messages and the plain few-shot text."""
    return with_shots(problem, shots_for(source))


def with_shots(problem: str, shots: tuple[Shot, ...]) -> Prompt:
    """The prompt for one problem with the given worked examples (`build` picks them by source)."""
    messages = [{"role": "system", "content": SYSTEM}]
    text_parts = [SYSTEM, ""]
    for question, reasoning, answer in shots:
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": format_trace(reasoning, answer)}]
        text_parts += [f"Problem: {question}", f"Solution: {format_trace(reasoning, answer)}", ""]
    messages.append({"role": "user", "content": problem})
    text_parts += [f"Problem: {problem}", f"Solution: {OPEN}"]
    return Prompt(messages=tuple(messages), text="\n".join(text_parts), text_prefix=OPEN)


def template_version() -> str:
    """A hash of the instructions and examples: part of the generate stage's key."""
    return hashlib.sha256(json.dumps([SYSTEM, FEW_SHOT, FEW_SHOT_BY_SOURCE], sort_keys=True).encode()
                          ).hexdigest()[:16]
