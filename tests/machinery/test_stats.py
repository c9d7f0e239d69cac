"""Typed stats records: a stats.json reads back as the record that wrote it, or fails naming file and field."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from curation.build import BuildStats
from curation.dedup import DedupStats
from curation.filters import FilterStats
from curation.generate import GenerateStats
from curation.pull import PullStats
from machinery import stats, store
from training.evaluate import EvalStats
from training.grpo import GrpoStats
from training.sft import SftStats


@dataclass(kw_only=True)
class Sample(store.StageStats):
    """A record with each kind of field the stage records hold."""

    bands: int = 0
    share: float = 0.0
    loss: float | None = None
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    hits: list[dict[str, str]] = field(default_factory=list)
    engine: Literal["local", "ray"] = "local"


def _write(tmp_path, payload) -> object:
    path = tmp_path / "dedup" / store.STATS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def _sample() -> dict:
    record = Sample(rows_in=5, kept=4, rejected=1, reasons={"dup": 1}, bands=16, share=0.5,
                    endpoints={"http://a": {"requests": 3}}, hits=[{"id": "x"}])
    return dataclasses.asdict(record)


def test_a_written_record_reads_back_equal(tmp_path):
    record = Sample(**_sample())
    (tmp_path / "dedup").mkdir()
    store.write_json(dataclasses.asdict(record), tmp_path / "dedup" / store.STATS)  # as run_stage writes it
    assert stats.read(tmp_path, "dedup", Sample) == record


@pytest.mark.parametrize("record", [PullStats, DedupStats, GenerateStats, FilterStats, BuildStats, SftStats,
                                    GrpoStats, EvalStats])
def test_every_stage_record_round_trips(tmp_path, record):
    written = record(rows_in=3, kept=2, rejected=1, reasons={"r": 1})
    store.write_json(dataclasses.asdict(written), tmp_path / "stats.json")
    assert stats.load(tmp_path / "stats.json", record) == written


def test_a_renamed_field_fails_naming_the_file_and_both_names(tmp_path):
    payload = _sample()
    payload["lsh_bands"] = payload.pop("bands")
    path = _write(tmp_path, payload)
    with pytest.raises(stats.StatsError) as error:
        stats.load(path, Sample)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "unknown field 'lsh_bands'; missing field 'bands'" in message and "--force" in message


def test_a_missing_field_with_a_default_still_fails(tmp_path):
    payload = _sample()
    del payload["hits"]  # a default would hide it: the card would state an empty list as fact
    with pytest.raises(stats.StatsError, match=r"missing field 'hits'"):
        stats.load(_write(tmp_path, payload), Sample)


@pytest.mark.parametrize(("name", "value", "where"), [
    ("bands", "16", r"field bands is \"16\", not int"),
    ("bands", True, r"field bands is true, not int"),
    ("endpoints", {"http://a": {"requests": "3"}}, r"field endpoints\['http://a'\]\['requests'\] is \"3\""),
    ("hits", [{"id": 1}], r"field hits\[0\]\['id'\] is 1, not str"),
    ("loss", "low", r"field loss is \"low\", not float \| None"),
    ("reasons", [], r"field reasons is \[\], not an object"),
    ("engine", "spark", r"field engine is \"spark\", not one of \['local', 'ray'\]"),
])
def test_a_field_of_the_wrong_type_fails_naming_where(tmp_path, name, value, where):
    payload = _sample() | {name: value}
    path = _write(tmp_path, payload)
    with pytest.raises(stats.StatsError, match=where) as error:
        stats.load(path, Sample)
    assert str(error.value).startswith(f"{path}: ")


def test_json_numbers_fill_float_fields_and_null_fills_optional_ones(tmp_path):
    payload = _sample() | {"share": 1, "seconds": 2, "loss": None}
    record = stats.load(_write(tmp_path, payload), Sample)
    assert record.share == 1 and record.loss is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_an_unreadable_file_fails_naming_it(tmp_path, text):
    path = tmp_path / store.STATS
    path.write_text(text)
    with pytest.raises(stats.StatsError, match=rf"^{re.escape(str(path))}: .*Sample"):
        stats.load(path, Sample)


def test_a_missing_file_fails_naming_it(tmp_path):
    with pytest.raises(stats.StatsError, match=rf"^{re.escape(str(tmp_path / 'pull' / store.STATS))}: cannot read"):
        stats.read(tmp_path, "pull", PullStats)
