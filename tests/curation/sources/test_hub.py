"""Hub sources through `datasets`: local files in the Hub's formats, bad rows, clear failures."""

from __future__ import annotations

import time

import polars as pl
import pytest

from curation.sources import hub
from machinery.schema import PROBLEM_SCHEMA, REJECTED_PROBLEM_SCHEMA, problem_id
from tests.conftest import write_jsonl

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many now?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 1,000 eggs twice. How many?", "answer": "2 * 1,000 = 2,000\n#### 2,000"},
    {"question": "Owes 5 and pays 8. Balance?", "answer": "5 - 8 = -3\n#### -3"},
]


def test_gsm8k_jsonl_maps_to_the_problem_schema(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)
    kept, rejected = hub.load("openai/gsm8k", data_files=path, split="test")
    assert kept.schema == PROBLEM_SCHEMA and rejected.schema == REJECTED_PROBLEM_SCHEMA
    assert kept["answer"].to_list() == ["7", "2000", "-3"]
    assert kept["source_id"].to_list() == ["test/0", "test/1", "test/2"]
    assert kept["id"][0] == problem_id("openai/gsm8k", "test/0")
    assert rejected.is_empty()


def test_bad_rows_are_rejected_with_a_reason_naming_the_field(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        GSM8K_ROWS[0],
        {"answer": "#### 3"},  # missing question
        {"question": 12, "answer": "#### 3"},  # wrong type
        {"question": "   ", "answer": "#### 3"},  # empty text
        {"question": "How many?", "answer": "no final marker"},  # unparsable gold
        {"question": "How many?", "answer": "#### seven"},  # gold not a number
    ])
    kept, rejected = hub.load("openai/gsm8k", data_files=path)
    assert kept.height == 1
    assert rejected["reject_reason"].to_list() == [
        "missing_field", "wrong_type", "empty_text", "unparsable_answer", "unparsable_answer"]
    assert "question" in rejected["reject_detail"][0]
    assert rejected["problem"][1] == "12"  # the bad value is kept, as text
    assert kept.height + rejected.height == 6


def test_malformed_json_lines_are_rejected_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GSM8K_ROWS[0], "{not json", "[1, 2]", GSM8K_ROWS[1]])
    kept, rejected = hub.load("openai/gsm8k", data_files=path)
    assert kept.height == 2
    assert rejected["reject_reason"].to_list() == ["malformed_row", "malformed_row"]
    assert rejected["reject_detail"][0].startswith("train.jsonl:2:")
    assert rejected["reject_detail"][1].startswith("train.jsonl:3:")


def test_hub_layout_parquet_folder_picks_the_split(tmp_path):
    folder = tmp_path / "gsm8k" / "main"
    folder.mkdir(parents=True)
    pl.DataFrame(GSM8K_ROWS[:2]).write_parquet(folder / "train-00000-of-00001.parquet")
    pl.DataFrame(GSM8K_ROWS[2:]).write_parquet(folder / "test-00000-of-00001.parquet")
    kept, _ = hub.load("openai/gsm8k", data_files=tmp_path / "gsm8k", split="test")
    assert kept["answer"].to_list() == ["-3"]


def test_math500_format_keeps_its_ids_and_subject(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"problem": "What is $\\frac{1}{2}+\\frac{1}{2}$?", "solution": "It is $\\boxed{1}$.", "answer": "1",
         "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
        {"problem": "Compute $2^3$.", "solution": "$2^3 = \\boxed{8}$", "answer": "",
         "subject": "Algebra", "level": 1, "unique_id": "test/algebra/2.json"},
    ])
    kept, _ = hub.load("HuggingFaceH4/MATH-500", data_files=path, split="test")
    assert kept["source_id"].to_list() == ["test/algebra/1.json", "test/algebra/2.json"]
    assert kept["answer"].to_list() == ["1", "8"]  # an empty answer falls back to the last box
    assert '"subject": "Algebra"' in kept["meta"][0]


def test_numina_and_openr1_formats(tmp_path):
    numina = write_jsonl(tmp_path / "numina" / "train.jsonl", [
        {"source": "amc", "problem": "Find x if x+1=3.", "solution": "So $x=\\boxed{2}$.", "messages": []},
        {"source": "amc", "problem": "Prove it.", "solution": "No box here.", "messages": []},
    ])
    kept, rejected = hub.load("AI-MO/NuminaMath-CoT", data_files=numina)
    assert kept["answer"].to_list() == ["2"]
    assert rejected["reject_reason"].to_list() == ["unparsable_answer"]
    openr1 = write_jsonl(tmp_path / "openr1" / "train.jsonl", [
        {"problem": "1+1?", "solution": "\\boxed{2}", "answer": "2", "uuid": "abc-1", "problem_type": "Algebra",
         "question_type": "math-word-problem", "source": "olympiads"},
    ])
    kept, _ = hub.load("open-r1/OpenR1-Math-220k", data_files=openr1)
    assert kept["source_id"].to_list() == ["abc-1"]


def test_missing_file_fails_naming_it(tmp_path):
    with pytest.raises(hub.SourceError, match="data file not found: .*nope.jsonl"):
        hub.load("openai/gsm8k", data_files=tmp_path / "nope.jsonl")


def test_folder_without_the_split_says_what_it_found(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    with pytest.raises(hub.SourceError, match="no 'test' split .*train.jsonl"):
        hub.load("openai/gsm8k", data_files=tmp_path, split="test")


def test_unknown_hub_id_names_the_supported_ones():
    with pytest.raises(LookupError, match="openai/gsm8k"):
        hub.load("someone/unknown-dataset")


def test_unreachable_hub_fails_fast_in_one_line(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    hub.hub_reachable.cache_clear()
    try:
        started = time.monotonic()
        with pytest.raises(hub.SourceError) as err:
            hub.load("openai/gsm8k", split="test")
        assert time.monotonic() - started < 5  # datasets alone retries for about 23 s
        assert "\n" not in str(err.value) and "data_files" in str(err.value)
    finally:
        hub.hub_reachable.cache_clear()


def test_real_gsm8k_files_load_completely(shared_data):
    test, test_rejected = hub.load("openai/gsm8k", data_files=shared_data / "gsm8k" / "test.jsonl", split="test")
    assert (test.height, test_rejected.height) == (1319, 0)
    assert test["answer"].str.contains(r"^-?\d+(\.\d+)?$").all()
    train, train_rejected = hub.load("openai/gsm8k", data_files=shared_data / "gsm8k", split="train")
    assert (train.height, train_rejected.height) == (7473, 0)


def test_real_math500_loads_completely(shared_data):
    kept, rejected = hub.load("HuggingFaceH4/MATH-500", data_files=shared_data / "math500", split="test")
    assert (kept.height, rejected.height) == (500, 0)
    assert kept["source_id"].n_unique() == 500
