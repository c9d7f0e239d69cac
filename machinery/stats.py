"""A stage's stats.json read back as the typed record that wrote it (a `store.StageStats` subclass).

Readers (the data cards, the run report) take figures from the record's attributes, never from
string keys, so a renamed, missing or retyped field fails here, naming the file and the field,
instead of as a KeyError or a wrong number in rendered text. The record class comes from the
caller: machinery imports no stage, so it cannot know which class a stage writes.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from machinery import store

Record = TypeVar("Record", bound=store.StageStats)


class StatsError(ValueError):
    """A stats.json that does not match its record class; the message names the file and the field."""


def _name(hint: Any) -> str:
    """A type as a reader writes it: `int`, `dict[str, int]`, `float | None`."""
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)


def _mismatch(value: Any, hint: Any, where: str) -> str | None:
    """Where (a field path) and how `value` differs from the type `hint`, or None when it fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        fits = [_mismatch(value, arg, where) for arg in args]
        return None if None in fits else f"{where} is {json.dumps(value)[:60]}, not {_name(hint)}"
    if hint is type(None):
        return None if value is None else f"{where} is {json.dumps(value)[:60]}, not null"
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return f"{where} is {json.dumps(value)[:60]}, not an object"
        key_hint, value_hint = args or (Any, Any)
        for key, item in value.items():
            problem = _mismatch(key, key_hint, f"{where} key") or _mismatch(item, value_hint, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if origin is list or hint is list:
        if not isinstance(value, list):
            return f"{where} is {json.dumps(value)[:60]}, not a list"
        item_hint = args[0] if args else Any
        return next(filter(None, (_mismatch(item, item_hint, f"{where}[{i}]") for i, item in enumerate(value))), None)
    if origin is typing.Literal:
        return None if value in args else f"{where} is {json.dumps(value)[:60]}, not one of {list(args)}"
    if not isinstance(hint, type):  # a record field typed in a way this reader does not know yet
        raise TypeError(f"machinery.stats cannot check {where}, typed {hint}: teach `_mismatch` that type")
    # JSON has one number type: a float field may hold an integer; a bool is never a number here
    accepted = {float: (int, float)}.get(hint, hint)
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, accepted):
        return f"{where} is {json.dumps(value)[:60]}, not {_name(hint)}"
    return None


def load(path: Path, record: type[Record]) -> Record:
    """The `record` in the stats.json at `path`; StatsError naming the file and field if any differs."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise StatsError(f"{path}: cannot read the {record.__name__} record ({error})") from error
    if not isinstance(payload, dict):
        raise StatsError(f"{path}: a {record.__name__} record is a JSON object, found {type(payload).__name__}")
    fields = [f.name for f in dataclasses.fields(record)]
    unknown = [name for name in payload if name not in fields]
    missing = [name for name in fields if name not in payload]
    if unknown or missing:  # both named at once: a renamed field shows as one of each
        found = [f"unknown field {', '.join(map(repr, unknown))}" if unknown else "",
                 f"missing field {', '.join(map(repr, missing))}" if missing else ""]
        raise StatsError(f"{path}: {'; '.join(filter(None, found))} (a {record.__name__} has {', '.join(fields)}); "
                         "it was written by other code: re-run that stage with --force")
    hints = typing.get_type_hints(record)
    for name in fields:
        problem = _mismatch(payload[name], hints[name], name)
        if problem:
            raise StatsError(f"{path}: field {problem} ({record.__name__}.{name} is {_name(hints[name])})")
    return record(**payload)


def read(run_dir: Path, stage: str, record: type[Record]) -> Record:
    """The `record` that `stage` wrote to its stats.json in `run_dir` (see `load`)."""
    return load(run_dir / stage / store.STATS, record)
