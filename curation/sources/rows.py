"""Turning one raw source row into a Problem, or a Rejected row that says why not."""

from __future__ import annotations

from typing import Any

from machinery.schema import (
    Problem,
    Rejected,
    RejectReason,
    as_text,
    problem_id,
    to_meta,
)


def make_problem(
    *,
    source: str,
    source_id: str,
    problem: Any,
    answer: Any,
    solution: Any = None,
    meta: dict[str, Any] | None = None,
    answer_field: str = "answer",
    problem_field: str = "problem",
) -> Problem | Rejected:
    """Validate raw field values; return the Problem, or a Rejected naming the bad field."""
    meta_json = to_meta(meta or {})

    def reject(reason: RejectReason, detail: str) -> Rejected:
        return Rejected(
            source=source,
            source_id=source_id,
            reason=reason,
            detail=detail,
            problem=as_text(problem),
            answer=as_text(answer),
            solution=as_text(solution),
            meta=meta_json,
        )

    for name, value in ((problem_field, problem), (answer_field, answer)):
        if value is None:
            return reject(RejectReason.MISSING_FIELD, f"field {name!r} is missing or null")
        if not isinstance(value, str):
            return reject(RejectReason.WRONG_TYPE, f"field {name!r} is {type(value).__name__}, expected str")
    if solution is not None and not isinstance(solution, str):
        return reject(RejectReason.WRONG_TYPE, f"solution is {type(solution).__name__}, expected str")
    if not problem.strip():
        return reject(RejectReason.EMPTY_TEXT, f"field {problem_field!r} is empty")
    if not answer.strip():
        return reject(RejectReason.UNPARSABLE_ANSWER, f"no gold answer found in field {answer_field!r}")
    return Problem(
        id=problem_id(source, source_id),
        source=source,
        source_id=source_id,
        problem=problem.strip(),
        answer=answer.strip(),
        solution=solution,
        meta=meta_json,
    )


def strip_math_delimiters(answer: str) -> str:
    """"$\\frac{1}{2}$" -> "\\frac{1}{2}": gold answers are stored without outer `$`."""
    text = answer.strip()
    if len(text) > 1 and text.startswith("$") and text.endswith("$"):
        return text.strip("$").strip()
    return text
