"""One completion's checks, as one list: the filter stage, the GRPO reward and the eval all run it.

`CHECKS` is a list of `(reasons, check)` entries, as datatrove's filters are steps: a new check
is one entry. Each check maps the rows still alive to a failure or None per row, so a check
that needs the whole batch (the step checker's `check_many`, math-verify in a process pool
with a deadline) fits as well as a per-text one. A row leaves at its first failure, cheapest
checks first: format, too short, too long, repetitive, wrong language, a false arithmetic step,
wrong answer (or no verdict in time).

Not in the list, because they need what one completion does not have: `truncated` (the
teacher's finish reason; Tunix's rewards see none), near-identical traces of one problem,
the LLM judge and best-of-N (other rows of the batch). They stay in the filter stage
(`curation.filters`), after this list.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from curation import answers, steps, verifier
from machinery.config import FilterConfig

_WORD = re.compile(r"\S+")
# The FilterConfig fields the checks do not read: the filter stage's own (best-of-N, near-identical
# traces, the judge). Every other field, a new check's bound too, is one the checks may read.
FILTER_ONLY_FIELDS = ("keep_per_problem", "similar_threshold", "judge")


class FilterReason(StrEnum):
    """Why a trace was dropped (the values are in rejected tables on disk and in the data cards)."""

    # Given by `CHECKS`, for any completion:
    BAD_FORMAT = "bad_format"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    REPETITIVE = "repetitive"
    WRONG_LANGUAGE = "wrong_language"
    WRONG_STEP = "wrong_step"
    WRONG_ANSWER = "wrong_answer"
    UNVERIFIABLE = "unverifiable"
    # Given by the filter stage alone (see the module docstring):
    TRUNCATED = "truncated"
    NEAR_DUPLICATE_TRACE = "near_duplicate_trace"
    JUDGE_REJECTED = "judge_rejected"
    UNJUDGED = "unjudged"  # the judge did not answer after its retries; the next run asks again
    BEST_OF_N_SURPLUS = "best_of_n_surplus"


class Failure(NamedTuple):
    """The reason a completion fails a check, and the evidence (the false claim, the answer given, ...)."""

    reason: FilterReason
    detail: str


@dataclass(frozen=True)
class Verdict:
    """One completion's verdict: `reason` None means kept; `formatted` is whether it passed the format check."""

    reason: FilterReason | None
    detail: str
    formatted: bool


@dataclass(frozen=True, kw_only=True)
class Row:
    """A completion with what the checks read: its problem's gold answer, source and meta, and its tokens."""

    text: str
    gold: str
    source: str
    meta: str  # the problem's JSON meta; procedural sources' generator entry
    tokens: int


@dataclass(kw_only=True)
class Context:
    """What the checks of one batch share: the bounds, the answer check's budget, and the counts they add."""

    config: FilterConfig
    deadline_s: float = 10.0  # per answer check, in a process pool
    workers: int = 2
    counts: dict[str, int] = field(default_factory=dict)  # verifier.Audit and the step checker's figures

    def add(self, counts: dict[str, int]) -> None:
        """Add a check's counts to the batch's."""
        for name, count in counts.items():
            self.counts[name] = self.counts.get(name, 0) + count


CheckFn = Callable[[list[Row], Context], list[Failure | None]]


class Check(NamedTuple):
    """One entry of the list: the reasons it rejects with, and the check (alive rows -> failure or None each)."""

    reasons: tuple[FilterReason, ...]
    check: CheckFn


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one: near 1 for a degenerate loop."""
    words = _WORD.findall(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 20:  # too short to call a loop
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def latin_share(text: str) -> float:
    """Share of letters that are Latin script (English traces are ~1.0; LaTeX stays Latin)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    return sum("LATIN" in unicodedata.name(c, "") for c in letters) / len(letters)


def token_count(text: str, reported: int | None) -> int:
    """The reported token count, or ~4 characters a token where there is none."""
    return reported if reported is not None else max(1, len(text) // 4)


def per_text(reason: FilterReason, problem: Callable[[Row, FilterConfig], str | None]) -> Check:
    """An entry from a check of one row at a time: `problem` gives the detail of a failure, or None."""

    def check(rows: list[Row], context: Context) -> list[Failure | None]:
        found = (problem(row, context.config) for row in rows)
        return [None if detail is None else Failure(reason, detail) for detail in found]

    return Check((reason,), check)


def _format(row: Row, config: FilterConfig) -> str | None:
    return answers.format_problem(row.text)


def _too_short(row: Row, config: FilterConfig) -> str | None:
    return f"{row.tokens} tokens < {config.min_tokens}" if row.tokens < config.min_tokens else None


def _too_long(row: Row, config: FilterConfig) -> str | None:
    if (over := answers.too_long(row.text, row.gold)) is not None:  # the verifier's caps, for any completion
        return over
    if config.max_tokens is not None and row.tokens > config.max_tokens:
        return f"{row.tokens} tokens > {config.max_tokens}"
    return None


def _repetitive(row: Row, config: FilterConfig) -> str | None:
    share = repeated_ngram_share(row.text)
    return f"{share:.0%} of word 4-grams repeat" if share > config.max_repeated_ngram_share else None


def _language(row: Row, config: FilterConfig) -> str | None:
    latin = latin_share(row.text)
    return f"only {latin:.0%} of letters are Latin script" if latin < config.min_latin_share else None


def _steps(rows: list[Row], context: Context) -> list[Failure | None]:
    """A false arithmetic claim (`curation.steps`), all rows in one call; the checker's counts."""
    if not context.config.check_steps:
        return [None] * len(rows)
    tally = steps.check_many([row.text for row in rows])
    found = [Failure(FilterReason.WRONG_STEP, "false: " + "; ".join(false)[:500]) if false else None
             for false in tally.false]
    context.add({"step_claims_checked": tally.checked, "step_claims_skipped": tally.skipped,
                 "traces_with_false_steps": sum(f is not None for f in found)})
    return found


def _answer(rows: list[Row], context: Context) -> list[Failure | None]:
    """The answer against the gold (math-verify in a pool, and procedural generators' own score); the audit."""
    said, audit = verifier.verify([r.text for r in rows], [r.gold for r in rows], [r.source for r in rows],
                                  [r.meta for r in rows], deadline_s=context.deadline_s, workers=context.workers,
                                  unsafe_tasks=context.config.unsafe_scorers)
    context.add(dataclasses.asdict(audit))
    found: list[Failure | None] = []
    for row, ok in zip(rows, said):
        if ok is None:
            found.append(Failure(FilterReason.UNVERIFIABLE, "no verdict within the deadline"))
        elif not ok:
            found.append(Failure(FilterReason.WRONG_ANSWER,
                                 f"answered {answers.extract(row.text)!r}, gold {row.gold!r}"))
        else:
            found.append(None)
    return found


# Cheapest first: a row pays for the step checker and math-verify only when the rest passed.
# The filter-only checks (truncated, near-identical traces, judge, best-of-N) are not here: see the docstring.
CHECKS: tuple[Check, ...] = (
    per_text(FilterReason.BAD_FORMAT, _format),
    per_text(FilterReason.TOO_SHORT, _too_short),
    per_text(FilterReason.TOO_LONG, _too_long),
    per_text(FilterReason.REPETITIVE, _repetitive),
    per_text(FilterReason.WRONG_LANGUAGE, _language),
    Check((FilterReason.WRONG_STEP,), _steps),
    Check((FilterReason.WRONG_ANSWER, FilterReason.UNVERIFIABLE), _answer),
)


def first_failures(rows: Sequence[Row], context: Context, entries: Sequence[Check] = CHECKS
                   ) -> list[Failure | None]:
    """Each row's first failure along `entries` (None: it passed them all).

    Every entry runs, on no rows too, so the counts a batch reports always have the same keys.
    """
    verdicts: list[Failure | None] = [None] * len(rows)
    alive = list(range(len(rows)))
    for entry in entries:
        found = entry.check([rows[i] for i in alive], context)
        if len(found) != len(alive):
            raise RuntimeError(f"the check for {entry.reasons} gave {len(found)} verdicts for {len(alive)} rows")
        for i, failure in zip(alive, found):
            if failure is not None and failure.reason not in entry.reasons:
                raise RuntimeError(f"the check for {entry.reasons} rejected row {i} as {failure.reason!r}")
            verdicts[i] = failure
        alive = [i for i in alive if verdicts[i] is None]
    return verdicts


def rows_of(texts: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
            metas: Sequence[str | None] | None, tokens: Sequence[int | None] | None = None) -> list[Row]:
    """Rows from parallel columns; a missing token count is estimated from the text (`token_count`)."""
    n = len(texts)
    lengths = {"golds": len(golds), "sources": len(sources), "metas": n if metas is None else len(metas),
               "tokens": n if tokens is None else len(tokens)}
    wrong = {name: length for name, length in lengths.items() if length != n}
    if wrong:
        raise ValueError(f"checks need one gold, source, meta and token count per completion: {n} completions, "
                         + ", ".join(f"{length} {name}" for name, length in wrong.items()))
    meta_of = list(metas) if metas is not None else [None] * n
    missing = sorted({s for s, m in zip(sources, meta_of) if s.startswith("procedural/") and not m})
    if missing:
        raise ValueError(f"procedural sources need the problem's meta for the generator's verdict, none given for "
                         f"{', '.join(missing)}; pass meta= (the `meta` column of the dedup stage's problems)")
    counts = list(tokens) if tokens is not None else [None] * n
    return [Row(text=text or "", gold=gold, source=source, meta=meta or "{}", tokens=token_count(text or "", count))
            for text, gold, source, meta, count in zip(texts, golds, sources, meta_of, counts)]


def judge(texts: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
          metas: Sequence[str | None] | None, *, config: FilterConfig | None = None,
          tokens: Sequence[int | None] | None = None, deadline_s: float = 10.0, workers: int = 2
          ) -> list[Verdict]:
    """The verdict of `CHECKS` on each completion, as the filter stage would give it before its own checks.

    `config` None: `FilterConfig()`'s bounds. `deadline_s` bounds each answer check (the filter
    stage passes its `check_deadline_s`); `workers` is math-verify's process pool.
    """
    rows = rows_of(texts, golds, sources, metas, tokens)
    found = first_failures(rows, Context(config=config or FilterConfig(), deadline_s=deadline_s, workers=workers))
    # The format check is the first entry, so a row failed it or passed it: no row leaves unjudged on format.
    return [Verdict(reason=None, detail="", formatted=True) if failure is None else
            Verdict(reason=failure.reason, detail=failure.detail,
                    formatted=failure.reason is not FilterReason.BAD_FORMAT) for failure in found]


def rollout_config(config: FilterConfig | None = None) -> FilterConfig:
    """The bounds for a student's completions (GRPO rollouts, eval answers): the filter's, less its token lengths.

    `min_tokens` and `max_tokens` bound the teacher's traces in the teacher's tokens. A student's
    completion is bounded by its own decode budget (`grpo.max_new_tokens`, `eval.max_new_tokens`),
    and one cut there has no `</answer>` and fails the format check; its text alone would give only
    a 4-characters-a-token estimate in neither model's tokens. A right answer past the teacher's
    bound would earn nothing, a cliff that teaches no brevity, so these two bounds are lifted;
    loops, language, steps and the answer stay as the filter has them.
    """
    return (config or FilterConfig()).model_copy(update={"min_tokens": 0, "max_tokens": None})
