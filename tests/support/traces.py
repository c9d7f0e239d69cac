"""Real reasoning traces for filter tests and benchmarks: GSM8K and MATH-500 reference solutions.

A "trace" is a problem's own worked solution in the teacher's output format, so the filter
checks real text: GSM8K answers are plain numbers (the fast path), MATH-500 answers are LaTeX
(math-verify through sympy). A fixed share of samples is spoiled on purpose, chosen by a hash
of (problem, sample) so the same inputs always give the same traces: wrong answers, truncation,
missing tags, a repeated loop, and verbatim copies of an earlier sample (near-duplicates).
"""

from __future__ import annotations

import hashlib
import json
import re

import polars as pl

from curation import answers
from curation.teacher.prompts import format_trace

_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24
_OPENING_WORDS = ("first second then next also read check note the problem asks what we know given find "
                  "quantity each step carefully write down values plan approach compute total part whole "
                  "amount careful look again start simple idea method").split()


def reasoning_of(source: str, solution: str) -> str:
    """The worked solution without its final-answer marker."""
    if source == "openai/gsm8k":
        return _CALCULATOR.sub("", solution.rsplit("####", 1)[0]).strip()
    return solution.strip()


def _bucket(problem_id: str, sample: int) -> int:
    return int(hashlib.sha256(f"{problem_id}/{sample}".encode()).hexdigest(), 16) % 100


def _opening(problem_id: str, sample: int, words: int = 30) -> str:
    """A sample's own opening sentence: two samples of one problem differ as two real samples do."""
    digest = hashlib.sha256(f"opening/{problem_id}/{sample}".encode()).digest()
    return " ".join(_OPENING_WORDS[b % len(_OPENING_WORDS)] for b in digest[:words]).capitalize() + "."


def _wrong(answer: str) -> str:
    value = answers.plain_number(answer)
    return str(value + 1) if value is not None else f"{answer} + 1"


def sample(problem_id: str, source: str, solution: str, gold: str, k: int) -> tuple[str, str]:
    """(completion, finish_reason) of sample k of a problem: its solution, spoiled in ~30% of samples."""
    reasoning = reasoning_of(source, solution)
    bucket = _bucket(problem_id, k)
    if bucket < 12:
        return format_trace(reasoning, _wrong(gold)), "stop"
    if bucket < 16:
        return format_trace(reasoning, gold)[: max(20, len(reasoning) // 2)], "length"
    if bucket < 19:
        return f"{reasoning}\nThe answer is {gold}.", "stop"
    if bucket < 21:
        return format_trace(" ".join(["so we add it again"] * 30), gold), "stop"
    if bucket < 30 and k > 0:
        return format_trace(f"{_opening(problem_id, 0)} {reasoning}", gold), "stop"  # sample 0 again
    return format_trace(f"{_opening(problem_id, k)} {reasoning}", gold), "stop"


def generations(problems: pl.DataFrame, n: int) -> pl.DataFrame:
    """n traces per problem, in the generations table's columns the filter reads."""
    rows = []
    for problem_id, source, solution, gold in problems.select("id", "source", "solution", "answer").iter_rows():
        for k in range(n):
            text, finish = sample(problem_id, source, solution or "", gold, k)
            rows.append({"problem_id": problem_id, "sample_idx": k, "completion": text, "finish_reason": finish,
                         "completion_tokens": None})
    return pl.DataFrame(rows, schema={"problem_id": pl.String, "sample_idx": pl.Int32, "completion": pl.String,
                                      "finish_reason": pl.String, "completion_tokens": pl.Int32})


def answer_from_prompt(problems: pl.DataFrame):
    """A FakeOpenAI `answer` callback: the real solution of the problem a chat prompt asks about.

    Spoiled for some problems as `sample` spoils sample 1 (the server cannot tell samples apart):
    the same problem always gets the same text, whichever process or endpoint asks.
    """
    by_text = {p: (i, s, sol or "", a) for i, s, p, sol, a in
               problems.select("id", "source", "problem", "solution", "answer").iter_rows()}

    def answer(prompt: str) -> str:
        problem_id, source, solution, gold = by_text[json.loads(prompt)[-1]["content"]]
        return sample(problem_id, source, solution, gold, 1)[0]

    return answer
