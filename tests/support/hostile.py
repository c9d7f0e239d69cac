"""Hostile text for the checkers: runs, nesting, tags, digits and mixes that make careless regexes backtrack.

`texts` feeds the benchmark (benchmarks/hostile.py) and, in a small sample, tests/test_hostile.py;
`gsm8k_rows` is a source file's worth of the same in GSM8K's question/answer format.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

# Each piece is something a checker treats specially; repeated, nested or mixed they are the bait.
PIECES = ("\\boxed{", "\\boxed ", "\\boxed", "\\fbox{", "{", "}", "<answer>", "</answer>", "<ANSWER>", "<reasoning>",
          "</reasoning>", "####", "$", "\\$", "\\text{", "1,000", ",000", "3", "0.5", ".", " ", "\n", "\t", "apples ",
          "and ", "-", "\u2212", "\u0663", "\uff15", "\u00a0", "=", "+", "*", "/", "(", ")", "x", "\\frac{1}{2}")


def _run(rng: random.Random, size: int) -> str:
    """One character or piece, repeated to about `size` characters."""
    piece = rng.choice(PIECES + ("a", "9", " ", "\u0663", "\\"))
    return piece * max(1, size // len(piece))


def _nested(rng: random.Random, size: int) -> str:
    """Opening pieces then as many closing ones: `\\boxed{\\boxed{...}}`, `<answer><answer>...`."""
    opening, closing = rng.choice([("\\boxed{", "}"), ("{", "}"), ("<answer>", "</answer>"), ("\\fbox{", "}"),
                                   ("<reasoning>", "</reasoning>"), ("\\text{", "}")])
    depth = max(1, size // (len(opening) + len(closing)))
    return opening * depth + rng.choice(["", "5", " 3 apples "]) + closing * depth * rng.choice([0, 1, 1])


def _words(rng: random.Random, size: int) -> str:
    """A number then words: the bait of the old plain-number pattern (exponential in the words)."""
    return rng.choice(["3 ", "$1,080 ", "-4.0 ", "\\$5 "]) + "apples and oranges " * max(1, size // 19) + ";"


def _mix(rng: random.Random, size: int) -> str:
    """Random pieces up to `size` characters."""
    parts, length = [], 0
    while length < size:
        piece = rng.choice(PIECES)
        parts.append(piece)
        length += len(piece)
    return "".join(parts)


def _trace(rng: random.Random, size: int) -> str:
    """A well-formed trace whose reasoning or answer block holds a hostile body."""
    body = rng.choice([_run, _nested, _mix, _words])(rng, size)
    return rng.choice([f"<reasoning>{body}</reasoning><answer>3</answer>",
                       f"<reasoning>so</reasoning><answer>{body}</answer>",
                       f"<reasoning>3 + 4 = {body}</reasoning><answer>\\boxed{{{body}}}</answer>"])


KINDS: dict[str, Callable[[random.Random, int], str]] = {"run": _run, "nested": _nested, "words": _words,
                                                          "mix": _mix, "trace": _trace}


def texts(n: int, *, seed: int = 0, max_chars: int = 100_000) -> Iterator[tuple[str, str]]:
    """(kind, text) for n hostile texts; lengths spread log-uniformly up to about `max_chars`."""
    rng = random.Random(seed)
    kinds = list(KINDS.items())
    for i in range(n):
        kind, make = kinds[i % len(kinds)]
        size = int(10 ** rng.uniform(0, len(str(max_chars)) - 1))
        yield kind, make(rng, min(size, max_chars))[: max_chars + 200]


def gsm8k_rows(*, max_chars: int = 100_000) -> list[dict[str, object]]:
    """Rows in GSM8K's format, each hostile in one way: huge answers, nesting, control characters, bait."""
    rng = random.Random(1)
    huge = "9" * max_chars
    rows: list[dict[str, object]] = [
        {"question": "How many?", "answer": f"lots of work\n#### {huge}"},  # a gold over the answer cap
        {"question": "How many?", "answer": "x " * max_chars + "\n#### 4"},  # a solution over its cap
        {"question": "q " * max_chars, "answer": "#### 4"},  # a problem over its cap
        {"question": "Nested?", "answer": "\\boxed{" * 5_000 + "\n#### 5"},
        {"question": "Tags?", "answer": "<answer>" * 5_000 + "\n#### 6"},
        {"question": "Bait?", "answer": "#### 3 apples and oranges in the basket and the box;"},
        {"question": "Control\u0007 characters?", "answer": "#### 7"},
        {"question": "In the answer?", "answer": "#### 8\u0000"},
        {"question": "Unicode digits?", "answer": "#### \u0663\u0664"},
        {"question": "Empty gold?", "answer": "#### "},
        {"question": "Fine?", "answer": "2 + 2 = 4\n#### 4"},
    ]
    rows += [{"question": _mix(rng, 200), "answer": "#### " + _mix(rng, rng.choice([10, 1_000, 20_000]))}
             for _ in range(20)]
    return rows


def row_checks() -> Callable[[str], object]:
    """The filter's single-row checks as one call on a text: `curation.checks`' per-text entries where it exists.

    Those are the checks that read one completion alone (format, lengths, loops, language);
    the step checker and the answer check are measured on their own.
    """
    from machinery.config import FilterConfig

    try:
        from curation import checks
    except ImportError:  # before the filter's check list moved to curation/checks.py
        from curation import filters

        config = FilterConfig()
        return lambda text: filters.first_failure(text, "stop", max(1, len(text) // 4), config)
    batch = {checks.FilterReason.WRONG_STEP, checks.FilterReason.WRONG_ANSWER, checks.FilterReason.UNVERIFIABLE}
    entries = [entry for entry in checks.CHECKS if not set(entry.reasons) & batch]
    context = checks.Context(config=FilterConfig())

    def check(text: str) -> object:
        rows = checks.rows_of([text], ["3"], ["openai/gsm8k"], None)
        return checks.first_failures(rows, context, entries)[0]

    return check
