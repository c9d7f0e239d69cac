"""The eval stage: eval.json per model on the tiny model, scoring on planted completions, the card's table."""

from __future__ import annotations

import json
import os
import time

import polars as pl
import pytest

from curation import build, dedup, filters, generate, pull
from curation.teacher.prompts import format_trace
from data_cards import cards
from machinery import formats, store
from machinery.config import (
    BuildConfig,
    Config,
    DedupConfig,
    EvalConfig,
    FilterConfig,
    ProceduralSource,
    PullConfig,
    StudentConfig,
    TeacherConfig,
)
from models import registry
from models.decode import Generated
from tests.support.fake_openai import FakeOpenAI
from training import evaluate

HELD_OUT = ProceduralSource(task="chain_sum", n=10, seed=77)


def _config(**eval_options) -> Config:
    options = {"sets": [HELD_OUT], "limit": 3, "max_new_tokens": 8, "batch_size": 4, **eval_options}
    return Config(sources=[ProceduralSource(task="chain_sum", n=4)], student=StudentConfig(model="tiny-gemma3"),
                  eval=EvalConfig(**options))


def _finish(run_dir, stage: str, payload: bytes = b"adapter") -> None:
    """A complete training stage: an adapter file and the manifest that marks it done."""
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "adapter.safetensors").write_bytes(payload)
    store.finish_stage(stage_dir, stage=stage, key=stage, config={}, inputs={}, outputs=["adapter.safetensors"],
                       counts={}, started=time.time())


def _planted(answers: dict[str, str]):
    """A Generate factory answering each prompt with a planted completion (keyed by the problem's prompt)."""
    def make():
        def generate(prompts, temperature, seed):
            return [Generated(text=answers[p], finish_reason="stop", prompt_tokens=1, completion_tokens=1)
                    for p in prompts]
        return generate
    return make


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """A run with complete sft and grpo stages, evaluated for real with the tiny model for all three."""
    run = tmp_path_factory.mktemp("run")
    _finish(run, "sft")
    _finish(run, "grpo")
    calls = []

    def load(run_dir, stage, config):
        calls.append(stage)
        return registry.load(registry.TINY, seed=config.seed)

    manifest = evaluate.run(run, _config(), load=load)
    return run, manifest, calls


def test_eval_json_scores_every_model_from_its_own_rows(tiny_eval):
    run, _, calls = tiny_eval
    report = json.loads((run / "eval" / "eval.json").read_text())
    rows = store.finished(run, "eval").read()
    assert calls == [None, "sft", "grpo"]
    assert report["missing"] == [] and report["set"]["problems"] == 3
    # eval.json is the summary of the scored rows, model by model
    assert {m: report[m] for m in ("base", "sft", "grpo")} == evaluate.summarize(rows)
    # The three loaders gave the same random weights and decoding is greedy: the same text thrice.
    texts = {m: rows.filter(pl.col("model") == m).sort("problem_id")["completion"].to_list()
             for m in ("base", "sft", "grpo")}
    assert texts["base"] == texts["sft"] == texts["grpo"]
    # A random 2-layer byte model never writes the tag format, so nothing is formatted or correct.
    assert not rows["formatted"].any() and report["grpo"] == {"accuracy": 0.0, "format": 0.0, "n": 3}


def test_eval_rows_hold_one_scored_completion_per_model_and_problem(tiny_eval):
    run, manifest, _ = tiny_eval
    rows = store.finished(run, "eval").read()
    assert rows.height == 9 == manifest.counts["kept"]
    assert rows.group_by("model").len().sort("model").rows() == [("base", 3), ("grpo", 3), ("sft", 3)]
    assert {"model", "problem_id", "completion", "formatted", "correct", "finish_reason"} <= set(rows.columns)
    assert set(rows["finish_reason"]) <= {"stop", "length"}


def test_rerun_is_skipped_and_a_new_adapter_reruns(tiny_eval):
    run, manifest, _ = tiny_eval
    assert evaluate.run(run, _config(), load=lambda *a: pytest.fail("skipped run loaded a model")) == manifest
    _finish(run, "grpo", b"a newer adapter")
    again = evaluate.run(run, _config(), load=lambda *a: None, decoder=_planted_decoder("wrong"))
    assert again.key != manifest.key and again.inputs["grpo"] != manifest.inputs["grpo"]


def _planted_decoder(text: str):
    """A decoder factory (eval's `decoder` parameter) whose every answer is `text`."""
    def make(loaded, config, label):
        return lambda prompts, temperature, seed: [Generated(text=text, finish_reason="stop", prompt_tokens=1,
                                                             completion_tokens=1) for _ in prompts]
    return make


def test_missing_grpo_stage_is_reported_not_an_error(tmp_path):
    _finish(tmp_path, "sft")
    (tmp_path / "grpo").mkdir()  # started, never finished: no manifest
    evaluate.run(tmp_path, _config(), load=lambda *a: None, decoder=_planted_decoder("no idea"))
    assert not (tmp_path / "grpo" / "model" / "README.md").exists()  # no GRPO model: no model card
    report = evaluate.read(tmp_path)
    assert report["missing"] == ["grpo"] and "grpo" not in report
    assert set(report) == {"base", "sft", "set", "missing"}
    assert "| grpo | not run | | |" in evaluate.table(report)


def test_scoring_on_planted_completions(tmp_path):
    config = _config(pass_k=2)
    held = evaluate.held_out(tmp_path, config)
    problems = held.problems.to_dicts()
    prompt = {p["problem_id"]: formats.student_prompt(p["problem"], config.student.model) for p in problems}
    right = {prompt[p["problem_id"]]: format_trace("Add them.", p["gold"]) + "<end_of_turn>" for p in problems}
    wrong = {prompt[p["problem_id"]]: format_trace("Add them.", p["gold"] + "1") for p in problems}
    # sft: the first problem right, the second unformatted but right, the third wrong.
    first, second, third = (prompt[p["problem_id"]] for p in problems)
    mixed = {first: right[first], second: f"The answer is {problems[1]['gold']}.", third: wrong[third]}
    result = evaluate.evaluate(held, {"base": _planted(wrong), "sft": _planted(mixed), "grpo": _planted(right)},
                               config, missing=[])
    got = result.stats.results
    assert got["base"] == {"accuracy": 0.0, "format": 1.0, "n": 3, "pass_at_k": 0.0, "k": 2}
    assert got["sft"] == {"accuracy": round(1 / 3, 4), "format": round(2 / 3, 4), "n": 3,
                          "pass_at_k": round(1 / 3, 4), "k": 2}
    assert got["grpo"] == {"accuracy": 1.0, "format": 1.0, "n": 3, "pass_at_k": 1.0, "k": 2}
    assert result.kept.height == 3 * 3 * 3  # greedy + 2 samples, 3 models, 3 problems
    assert not result.kept["completion"].str.ends_with("<end_of_turn>").any()


def test_pass_at_k_counts_a_problem_solved_by_any_sample():
    rows = pl.DataFrame({"model": ["base"] * 6, "greedy": [True, True, False, False, False, False],
                         "sample_idx": [0, 0, 0, 1, 0, 1], "problem_id": ["a", "b", "a", "a", "b", "b"],
                         "correct": [False, False, False, True, False, False], "formatted": [True] * 6})
    assert evaluate.summarize(rows) == {"base": {"accuracy": 0.0, "format": 1.0, "n": 2, "pass_at_k": 0.5, "k": 2}}


def test_table_has_a_row_per_model():
    report = {"base": {"accuracy": 0.125, "format": 0.5, "n": 8}, "sft": {"accuracy": 0.25, "format": 1.0, "n": 8},
              "set": {}, "missing": ["grpo"]}
    assert evaluate.table(report).splitlines() == [
        "| model | accuracy | format | n |", "|---|---:|---:|---:|", "| base | 0.125 | 0.500 | 8 |",
        "| sft | 0.250 | 1.000 | 8 |", "| grpo | not run | | |"]


def _right_answers(prompt: str) -> str:
    problem = json.loads(prompt)[-1]["content"]
    value = eval(problem.split(":")[-1].replace("=", "").strip(), {"__builtins__": {}})  # noqa: S307 - our generator
    return format_trace(f"Adding from left to right gives {value}.", str(value))


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    """A small real run up to the cards (fake OpenAI teacher, always right)."""
    home = tmp_path_factory.mktemp("home")
    run = home / "runs" / "arith" / "v1"
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        pull.run(run, PullConfig(seed=5, sources=[ProceduralSource(task="chain_sum", n=16)]))
        dedup.run(run, DedupConfig())
        with FakeOpenAI(answer=_right_answers) as server:
            generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=1,
                                            api_key_env="NO_KEY_NEEDED"))
        filters.run(run, FilterConfig())
        build.run(run, BuildConfig(val_fraction=0.3, drop_zero_advantage=False), student="tiny-gemma3", seed=5)
        cards.run(run, seed=5)
        yield run
    finally:
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


def test_validation_split_is_the_default_held_out_set(built_run):
    held = evaluate.held_out(built_run, _config(sets=[], limit=None))
    validation = store.finished(built_run, "build").read().filter(pl.col("split") == "validation")
    assert held.problems["problem_id"].to_list() == validation["problem_id"].to_list()
    assert held.problems["meta"].null_count() == 0 and held.description["overlap_with_train"] == 0
    assert evaluate.held_out(built_run, _config(sets=[], limit=2)).problems.height == min(2, validation.height)


def test_eval_writes_the_model_card_and_leaves_the_data_cards_alone(built_run):
    from huggingface_hub import ModelCard

    data_cards = {p: store.file_hash(p) for p in sorted((built_run / "cards").rglob("*")) if p.is_file()}
    cards_manifest = store.finished(built_run, "cards").manifest
    _finish(built_run, "sft")
    _finish(built_run, "grpo")
    (built_run / "grpo" / "model").mkdir()
    right = format_trace("Add them.", "0")
    manifest = evaluate.run(built_run, _config(sets=[]), load=lambda *a: None, decoder=_planted_decoder(right))
    report = evaluate.read(built_run)
    path = built_run / "grpo" / "model" / "README.md"
    card = ModelCard.load(path)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": report["grpo"]["accuracy"], "format_compliance": 1.0}
    assert card.data.datasets == ["../../cards/sft", "../../cards/grpo"] and card.data.base_model is None
    assert evaluate.table(report) in card.text and "grpo:" in card.text  # the table and the training config
    assert manifest.outputs["../grpo/model/README.md"] == store.file_hash(path)
    # Data cards are about data: evaluation neither rewrites them nor makes the cards stage stale.
    assert {p: store.file_hash(p) for p in data_cards} == data_cards
    assert "Evaluation" not in (built_run / "cards" / "grpo" / "README.md").read_text()
    assert cards.run(built_run, seed=5) == cards_manifest
