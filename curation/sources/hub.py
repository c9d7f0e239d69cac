"""Hugging Face Hub math datasets, by Hub id or from local files in the same format.

Every dataset goes through `datasets.load_dataset`: by Hub id in production, or with the
`json`/`parquet` builder over local files offline. A per-format row mapper turns rows into
the problem schema and extracts the gold answer (`#### 72`, `\\boxed{...}`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import polars as pl

from curation.answers import boxed_contents, plain_number
from curation.sources.rows import make_problem
from machinery.schema import (
    Problem,
    Rejected,
    RejectReason,
    as_text,
    problems_frame,
    rejected_frame,
)

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class SourceError(Exception):
    """A source cannot be read at all (missing file, unknown id, no network): one clear line."""


Row = dict[str, Any]
_NON_FINITE = {"nan", "inf", "infinity"}


def _gsm8k(row: Row, source: str, source_id: str) -> Problem | Rejected:
    """GSM8K: the gold answer is the number after `####` in `answer` (commas removed)."""
    solution = row.get("answer")
    gold: Any = solution
    if isinstance(solution, str):
        tail = solution.rsplit("####", 1)[1].strip() if "####" in solution else ""
        if tail.lower().lstrip("+-") in _NON_FINITE:
            return Rejected(source=source, source_id=source_id, reason=RejectReason.NON_FINITE_ANSWER,
                            detail=f"gold answer {tail!r} after '####' is not a finite number",
                            problem=as_text(row.get("question")), answer=tail, solution=solution)
        value = plain_number(tail) if tail else None
        gold = format(value, "f") if value is not None else ""
    return make_problem(source=source, source_id=source_id, problem=row.get("question"), answer=gold,
                        solution=solution, meta={}, problem_field="question", answer_field="answer")


def _last_boxed(solution: Any) -> Any:
    """The last outermost `\\boxed{}` of a solution ("" when none), or the value itself if not text."""
    if not isinstance(solution, str):
        return solution
    boxed = boxed_contents(solution)
    return boxed[-1].strip() if boxed else ""


def _math_like(answer_field: str | None, meta_fields: tuple[str, ...]) -> Callable[..., Problem | Rejected]:
    """MATH-style rows: gold from `answer_field` when present, else the solution's last box."""

    def mapper(row: Row, source: str, source_id: str) -> Problem | Rejected:
        gold = row.get(answer_field) if answer_field else None
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            gold = _last_boxed(row.get("solution"))
        return make_problem(source=source, source_id=source_id, problem=row.get("problem"), answer=gold,
                            solution=row.get("solution"), meta={k: row.get(k) for k in meta_fields if k in row},
                            answer_field=answer_field or "solution")

    return mapper


@dataclass(frozen=True, kw_only=True)
class HubFormat:
    """How one Hub dataset is laid out: its configs, row id field, license and row mapper."""

    hub_id: str
    configs: tuple[str | None, ...]
    id_field: str | None
    license: str
    mapper: Callable[[Row, str, str], Problem | Rejected]


_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                  "number_theory", "prealgebra", "precalculus")

FORMATS: dict[str, HubFormat] = {
    f.hub_id: f
    for f in (
        HubFormat(hub_id="openai/gsm8k", configs=("main",), id_field=None, license="mit", mapper=_gsm8k),
        HubFormat(hub_id="HuggingFaceH4/MATH-500", configs=(None,), id_field="unique_id", license="mit",
                  mapper=_math_like("answer", ("subject", "level"))),
        HubFormat(hub_id="EleutherAI/hendrycks_math", configs=_MATH_SUBJECTS, id_field=None, license="mit",
                  mapper=_math_like(None, ("type", "level"))),
        HubFormat(hub_id="AI-MO/NuminaMath-CoT", configs=(None,), id_field=None, license="apache-2.0",
                  mapper=_math_like(None, ("source",))),
        HubFormat(hub_id="open-r1/OpenR1-Math-220k", configs=("default",), id_field="uuid", license="apache-2.0",
                  mapper=_math_like("answer", ("problem_type", "question_type", "source"))),
    )
}


def get_format(hub_id: str) -> HubFormat:
    """The format of a supported Hub dataset; LookupError names the supported ids."""
    try:
        return FORMATS[hub_id]
    except KeyError:
        raise LookupError(f"unsupported Hub dataset {hub_id!r}; supported: {', '.join(FORMATS)}") from None


def load(
    hub_id: str,
    data_files: str | Path | list[str | Path] | None = None,
    split: str = "train",
    *,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load a Hub math dataset (or local files in its format) as (kept, rejected) frames."""
    fmt = get_format(hub_id)
    if data_files is not None:
        rows = _local_rows(_resolve_files(data_files, split))
    else:
        rows = _hub_rows(fmt, config, split, revision)
    kept: list[Problem] = []
    rejected: list[Rejected] = []
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        result = _map_row(fmt, row, split, index)
        (kept if isinstance(result, Problem) else rejected).append(result)
    logger.info("%s [%s]: %d problems, %d rejected", hub_id, split, len(kept), len(rejected))
    return problems_frame(kept), rejected_frame(rejected)


def _map_row(fmt: HubFormat, row: Row, split: str, index: int) -> Problem | Rejected:
    """Map one row; a row that is not an object or has no usable id becomes a reject."""
    row_id = row.get(fmt.id_field) if fmt.id_field and isinstance(row, dict) else None
    source_id = str(row_id) if isinstance(row_id, str) and row_id else f"{split}/{index}"
    if "__malformed__" in row:
        return Rejected(source=fmt.hub_id, source_id=source_id,
                        reason=RejectReason(row.get("__reason__", RejectReason.MALFORMED_ROW)),
                        detail=row["__malformed__"])
    return fmt.mapper(row, fmt.hub_id, source_id)


def _resolve_files(data_files: str | Path | list[str | Path], split: str) -> list[Path]:
    """Local files to read: the files given, or a folder's files for the split."""
    paths = [Path(p) for p in (data_files if isinstance(data_files, list) else [data_files])]
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise SourceError(f"data file not found: {path}")
        if path.is_file():
            files.append(path)
            continue
        candidates = sorted(p for p in path.rglob("*") if p.suffix in _FILE_BUILDERS and p.is_file())
        matching = [p for p in candidates if p.name.startswith(split) or split in p.relative_to(path).parts[:-1]]
        if not matching:
            raise SourceError(f"no {split!r} split in {path}: expected a file named {split}*.jsonl/.parquet, "
                              f"found {[str(p.relative_to(path)) for p in candidates] or 'no data files'}")
        files.extend(matching)
    kinds = {_FILE_BUILDERS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise SourceError(f"data files must all be .jsonl/.json or all .parquet: {[str(f) for f in files]}")
    return files


def _local_rows(files: list[Path]) -> Iterator[Row]:
    """Rows of local files through `datasets`; jsonl that pyarrow cannot read goes line by line."""
    import datasets

    builder = _FILE_BUILDERS[files[0].suffix]
    try:
        dataset = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # noqa: BLE001 - pyarrow, pandas and UTF-8 errors all mean "not clean columns"
        if builder != "json":
            raise SourceError(f"cannot read {', '.join(map(str, files))}: {err.__cause__ or err}") from err
        # Mixed types in a column, invalid UTF-8 or a broken line: read each line alone, so one bad
        # row is one counted reject (naming file:line) instead of the whole file failing.
        logger.warning("datasets could not read %s as clean columns (%s: %s); reading it line by line",
                       ", ".join(f.name for f in files), type(err).__name__, str(err.__cause__ or err)[:200])
        yield from _jsonl_lines(files)
        return
    yield from dataset


def _jsonl_lines(files: Iterable[Path]) -> Iterator[Row]:
    """Rows of jsonl files, one per line; a bad line becomes a marked row naming file:line."""
    for path in files:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    yield {"__malformed__": f"{path.name}:{number}: invalid UTF-8 at byte {err.start} of the line",
                           "__reason__": RejectReason.INVALID_UTF8}
                    continue
                except json.JSONDecodeError as err:
                    yield {"__malformed__": f"{path.name}:{number}: invalid JSON ({err.msg})"}
                    continue
                except RecursionError:
                    yield {"__malformed__": f"{path.name}:{number}: JSON nested too deeply to read",
                           "__reason__": RejectReason.NESTED_TOO_DEEP}
                    continue
                if not isinstance(row, dict):
                    yield {"__malformed__": f"{path.name}:{number}: expected a JSON object, got {type(row).__name__}"}
                    continue
                yield row


def _hub_rows(fmt: HubFormat, config: str | None, split: str, revision: str | None) -> Iterator[Row]:
    """Rows from the Hub itself, failing in one line when the Hub cannot be reached."""
    import datasets

    _require_hub(fmt.hub_id)
    for name in (config,) if config else fmt.configs:
        try:
            yield from datasets.load_dataset(fmt.hub_id, name, split=split, revision=revision)
        except datasets.exceptions.DatasetNotFoundError as err:
            raise SourceError(f"Hub dataset {fmt.hub_id!r} (config {name!r}) not found: {err}") from err
        except (ConnectionError, OSError) as err:
            raise SourceError(f"cannot load {fmt.hub_id!r} from the Hub: {err}") from err


def _offline_mode() -> bool:
    """True when the user asked huggingface_hub to stay offline (use only the local cache)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> str | None:
    """None when the Hub endpoint accepts a TCP connection, else why not (checked once)."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as err:
        return f"{host}:443 unreachable ({err})"
    return None


def _require_hub(hub_id: str) -> None:
    """Fail fast offline: `datasets` would otherwise retry for about 23 s per dataset."""
    if _offline_mode():
        return
    problem = hub_reachable()
    if problem:
        raise SourceError(f"cannot reach the Hugging Face Hub for {hub_id!r}: {problem}; "
                          f"pass data_files (--data-files) to load a local copy, or set HF_HUB_OFFLINE=1 "
                          f"to use the local cache")
