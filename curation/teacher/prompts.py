"""The teacher's instructions and few-shot examples, per kind of source.

Base models never produce the tags without examples (tried on Gemma 3 270M), so every
prompt carries three worked examples in the exact output format:
`<reasoning>...</reasoning>\n<answer>...</answer>`.
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

FEW_SHOT: dict[str, tuple[tuple[str, str, str], ...]] = {
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


def kind_of(source: str) -> Kind:
    """The few-shot set for a problem's source."""
    if source.startswith("procedural/") and "gsm" not in source:
        return "arithmetic"
    if source in ("openai/gsm8k",) or "gsm" in source:
        return "word_problem"
    return "competition"


def format_trace(reasoning: str, answer: str) -> str:
    """The output format the filters and the GRPO reward check."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


def build(problem: str, source: str) -> Prompt:
    """The prompt for one problem: chat messages and the plain few-shot text."""
    shots = FEW_SHOT[kind_of(source)]
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
    return hashlib.sha256(json.dumps([SYSTEM, FEW_SHOT], sort_keys=True).encode()).hexdigest()[:16]
