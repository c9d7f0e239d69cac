"""The pull stage: sources into one problem table; reproducible, nothing dropped silently."""

from __future__ import annotations

import polars as pl
import pytest

from curation import pull
from machinery import store
from machinery.config import HubSource, ProceduralSource, PullConfig
from tests.conftest import write_jsonl


def test_kept_plus_rejected_equals_every_source_row(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"question": "2+2?", "answer": "#### 4"}, {"question": "", "answer": "#### 1"}, {"answer": "#### 1"}])
    config = PullConfig(seed=1, sources=[ProceduralSource(task="chain_sum", n=5), HubSource(id="openai/gsm8k",
                                                                                             data_files=str(path))])
    result = pull.pull(config)
    assert (result.stats.rows_in, result.stats.kept, result.stats.rejected) == (8, 6, 2)
    assert result.stats.reasons == {"empty_text": 1, "missing_field": 1}
    assert result.stats.per_source == {"procedural/chain_sum": {"kept": 5, "rejected": 0},
                                       "openai/gsm8k": {"kept": 1, "rejected": 2}}


def test_a_source_listed_twice_is_rejected_as_duplicate_ids():
    config = PullConfig(seed=1, sources=[ProceduralSource(task="chain_sum", n=3)] * 2)
    result = pull.pull(config)
    assert result.kept.height == 3 and result.kept["id"].is_unique().all()
    assert result.rejected["reject_reason"].to_list() == ["duplicate_id"] * 3


def test_same_seed_gives_byte_identical_data(tmp_path):
    config = PullConfig(seed=42, sources=[ProceduralSource(task="gsm_symbolic", n=6),
                                          ProceduralSource(task="fraction_simplification", n=6)])
    pull.run(tmp_path / "a", config)
    pull.run(tmp_path / "b", config)
    first, second = (tmp_path / d / "pull" / "data.parquet" for d in "ab")
    assert first.read_bytes() == second.read_bytes()


def test_changed_local_file_changes_the_key_and_recomputes(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "2+2?", "answer": "#### 4"}])
    config = PullConfig(sources=[HubSource(id="openai/gsm8k", data_files=str(path))])
    first = pull.run(tmp_path / "run", config)
    write_jsonl(path, [{"question": "2+3?", "answer": "#### 5"}])
    second = pull.run(tmp_path / "run", config)
    assert first.key != second.key
    assert store.finished(tmp_path / "run", "pull").read()["answer"].to_list() == ["5"]


def test_rejected_rows_land_in_rejected_parquet(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": 3, "answer": "#### 4"}])
    pull.run(tmp_path / "run", PullConfig(sources=[HubSource(id="openai/gsm8k", data_files=str(path))]))
    rejected = pl.read_parquet(tmp_path / "run" / "pull" / "rejected.parquet")
    assert rejected["reject_reason"].to_list() == ["wrong_type"]


def test_every_text_field_has_a_cap_and_the_reject_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"question": "2+2?", "answer": "#### 4"},
        {"question": "q" * 101, "answer": "#### 4"},
        {"question": "2+2?", "answer": "x" * 200 + "\n#### 4"},
        {"question": "2+2?", "answer": "#### " + "4" * 30},
        {"question": "2+2?", "answer": "#### 4\u0007"}])
    config = PullConfig(sources=[HubSource(id="openai/gsm8k", data_files=str(path))], max_chars=100,
                        max_answer_chars=20, max_solution_chars=100)
    result = pull.pull(config)
    assert result.kept["source_id"].to_list() == ["train/0"]
    details = dict(zip(result.rejected["source_id"], result.rejected["reject_detail"]))
    assert dict(zip(result.rejected["source_id"], result.rejected["reject_reason"])) == {
        "train/1": "too_long", "train/2": "too_long", "train/3": "too_long", "train/4": "unparsable_answer"}
    assert details["train/1"] == "problem has 101 characters > pull.max_chars 100"
    assert details["train/2"] == "solution has 207 characters > pull.max_solution_chars 100"
    assert details["train/3"] == "answer has 30 characters > pull.max_answer_chars 20"


def test_control_characters_are_named_by_field():
    frame = pl.DataFrame({"problem": ["ok", "ok"], "answer": ["1", "1"], "solution": [None, "a\u0000b"]})
    kept, rejected = pull.screen(frame, max_chars=100)
    assert kept.height == 1
    assert rejected["reject_detail"].to_list() == ["solution holds control characters (NUL, BEL, ...)"]


def test_the_config_passes_its_pull_caps_to_the_stage():
    from machinery.config import Config

    config = Config(sources=[ProceduralSource(task="chain_sum")],
                    pull={"max_chars": 5, "max_answer_chars": 6, "max_solution_chars": 7})
    stage = config.pull_stage()
    assert (stage.max_chars, stage.max_answer_chars, stage.max_solution_chars) == (5, 6, 7)


def test_a_procedural_task_with_an_eval_scorer_needs_the_allow_option():
    from curation.sources.procedural import UnsafeScorerError

    with pytest.raises(UnsafeScorerError, match="spiral_matrix"):
        pull.pull(PullConfig(sources=[ProceduralSource(task="spiral_matrix", n=2)]))
    result = pull.pull(PullConfig(sources=[ProceduralSource(task="spiral_matrix", n=2, allow_unsafe_scorer=True)]))
    assert result.kept.height == 2
