"""The problem table: its record, its polars schema, and why rows are rejected."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

import polars as pl


class RejectReason(StrEnum):
    """Why a row left a stage; written to `reject_reason` of rejected.parquet."""

    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    UNPARSABLE_ANSWER = "unparsable_answer"
    MALFORMED_ROW = "malformed_row"
    INVALID_UTF8 = "invalid_utf8"
    NESTED_TOO_DEEP = "nested_too_deep"  # JSON deeper than the parser's recursion limit
    NON_FINITE_ANSWER = "non_finite_answer"  # "#### nan", "#### inf": no answer can equal it
    DUPLICATE_ID = "duplicate_id"
    TOO_LONG = "too_long"  # a text field over its pull cap (max_chars, max_answer_chars, ...), named in the detail
    CONTROL_CHARACTERS = "control_characters"  # NUL, BEL and the like: never in a real problem


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem with its verified gold answer, whatever source it came from."""

    id: str
    source: str
    source_id: str
    problem: str
    answer: str
    solution: str | None
    meta: str  # JSON object of source-specific fields (subject, level, generator metadata)


PROBLEM_SCHEMA = pl.Schema({f.name: pl.String for f in fields(Problem)})
REJECT_COLUMNS = {"reject_reason": pl.String, "reject_detail": pl.String}
# Rejected source rows keep whatever they had, rendered as text, so nothing is lost.
REJECTED_PROBLEM_SCHEMA = pl.Schema({**PROBLEM_SCHEMA, **REJECT_COLUMNS})


def problem_id(source: str, source_id: str) -> str:
    """Stable id of a problem: a hash of its source and its row id there."""
    return hashlib.sha256(f"{source}\x1f{source_id}".encode()).hexdigest()[:16]


def to_meta(values: dict[str, Any]) -> str:
    """Serialise source-specific fields as canonical JSON (sorted keys, tuples as lists)."""
    return json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)


def problems_frame(problems: list[Problem]) -> pl.DataFrame:
    """A problem table from records, with the fixed schema even when empty."""
    return pl.DataFrame([asdict(p) for p in problems], schema=PROBLEM_SCHEMA, orient="row")


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """A source row that did not become a problem, with what it held and why."""

    source: str
    source_id: str
    reason: RejectReason
    detail: str
    problem: str | None = None
    answer: str | None = None
    solution: str | None = None
    meta: str = "{}"

    def row(self) -> dict[str, str | None]:
        """The row of rejected.parquet for this reject."""
        return {
            "id": problem_id(self.source, self.source_id),
            "source": self.source,
            "source_id": self.source_id,
            "problem": self.problem,
            "answer": self.answer,
            "solution": self.solution,
            "meta": self.meta,
            "reject_reason": self.reason.value,
            "reject_detail": self.detail,
        }


def rejected_frame(rejects: list[Rejected]) -> pl.DataFrame:
    """A rejected-problems table from records, with the fixed schema even when empty."""
    return pl.DataFrame([r.row() for r in rejects], schema=REJECTED_PROBLEM_SCHEMA, orient="row")


def as_text(value: Any) -> str | None:
    """Render any source value as text for a rejected row (None stays None)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
