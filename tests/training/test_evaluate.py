"""The eval stage: eval.json per model on the tiny model, scoring on planted completions, the card's table."""

from __future__ import annotations

import json
import os
import time

import polars as pl
import pytest

from curation import build, dedup, filters, generate, minhash, pull
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
from training import evaluate, significance

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
    # eval.json is the summary of the scored rows, model by model, and says how each was asked
    assert {m: {k: v for k, v in report[m].items() if k != "prompt"} for m in ("base", "sft", "grpo")} \
        == evaluate.summarize(rows)
    assert [report[m]["prompt"] for m in ("base", "sft", "grpo")] == [evaluate.FEW_SHOT, evaluate.CHAT, evaluate.CHAT]
    # The three loaders gave the same random weights and decoding is greedy: the trained two, asked
    # alike, write the same text; the base model, asked with the teacher's few-shot text, its own.
    texts = {m: rows.filter(pl.col("model") == m).sort("problem_id")["completion"].to_list()
             for m in ("base", "sft", "grpo")}
    assert texts["sft"] == texts["grpo"] and all(t.startswith("<reasoning>\n") for t in texts["base"])
    # A random 2-layer byte model never writes the tag format, so nothing is formatted or strictly right;
    # 0 of 3 has the Wilson interval [0, z²/(3 + z²)].
    assert not rows["formatted"].any() and not rows["strict"].any()
    assert report["grpo"]["accuracy"] == 0.0 and report["grpo"]["format"] == 0.0 and report["grpo"]["n"] == 3
    assert report["grpo"]["accuracy_ci"] == [0.0, round(1.959964**2 / (3 + 1.959964**2), 4)] == [0.0, 0.5615]
    assert [(c["from"], c["to"]) for c in report["comparisons"]] == [("base", "sft"), ("sft", "grpo")]
    assert report["comparisons"][1]["accuracy"] == {"b": 0, "c": 0, "p": 1.0}  # same answers: no evidence


def test_eval_rows_hold_one_scored_completion_per_model_and_problem(tiny_eval):
    run, manifest, _ = tiny_eval
    rows = store.finished(run, "eval").read()
    assert rows.height == 9 == manifest.counts["kept"]
    assert rows.group_by("model").len().sort("model").rows() == [("base", 3), ("grpo", 3), ("sft", 3)]
    assert {"model", "problem_id", "completion", "formatted", "strict", "verdict", "answer", "answer_correct",
            "finish_reason"} <= set(rows.columns)
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
    assert set(report) == {"base", "sft", "comparisons", "set", "missing"}
    assert [(c["from"], c["to"]) for c in report["comparisons"]] == [("base", "sft")]
    assert "| grpo | not run | | | | |" in evaluate.table(report)


def _planted_for(config, held, answers_by_model):
    """Generate factories keyed by model, each answering its own prompt of problem i with answers[model][i]."""
    return {model: _planted(dict(zip(evaluate.prompts_for(model, held.problems, config), answers)))
            for model, answers in answers_by_model.items()}


def test_scoring_on_planted_completions(tmp_path):
    config = _config(pass_k=2)
    held = evaluate.held_out(tmp_path, config)
    golds = held.problems["gold"].to_list()
    right = [format_trace(f"Adding them up gives {g}.", g) for g in golds]
    # base: asked with the teacher's few-shot text, it continues the `<reasoning>` its prompt opened,
    # never closes it, and starts the next problem, where it is stopped: right answers, no format.
    base = [f"Adding them up gives {g}.\nProblem:" for g in golds]
    # sft: right; unformatted but right; formatted but wrong.
    sft = [right[0] + "<end_of_turn>", f"The answer is {golds[1]}.", format_trace("Add them.", golds[2] + "1")]
    # grpo: right, right, and the right answer after a false step (strict drops it, answer keeps it).
    grpo = [right[0], right[1], format_trace(f"First 2 + 2 = 5. Adding them up gives {golds[2]}.", golds[2])]
    result = evaluate.evaluate(held, _planted_for(config, held, {"base": base, "sft": sft, "grpo": grpo}),
                               config, missing=[])
    got = {m: {k: e[k] for k in ("accuracy", "answer_accuracy", "format", "n", "pass_at_k", "k", "prompt")}
           for m, e in result.stats.results.items()}
    third = round(1 / 3, 4)
    assert got["base"] == {"accuracy": 0.0, "answer_accuracy": 1.0, "format": 0.0, "n": 3, "pass_at_k": 0.0,
                           "k": 2, "prompt": evaluate.FEW_SHOT}
    assert got["sft"] == {"accuracy": third, "answer_accuracy": round(2 / 3, 4), "format": round(2 / 3, 4), "n": 3,
                          "pass_at_k": third, "k": 2, "prompt": evaluate.CHAT}
    assert got["grpo"] == {"accuracy": round(2 / 3, 4), "answer_accuracy": 1.0, "format": 1.0, "n": 3,
                           "pass_at_k": round(2 / 3, 4), "k": 2, "prompt": evaluate.CHAT}
    assert result.stats.results["sft"]["counts"] == {"accuracy": 1, "answer_accuracy": 2, "format": 2}
    rows = result.kept
    assert rows.height == 3 * 3 * 3  # greedy + 2 samples, 3 models, 3 problems
    order = {p: i for i, p in enumerate(held.problems["problem_id"])}
    greedy = rows.filter(pl.col("greedy"))
    mine = {m: greedy.filter(pl.col("model") == m).sort(pl.col("problem_id").replace_strict(order))
            for m in ("base", "sft", "grpo")}
    # The stored completion is what was judged: the prompt's opening put back, the stop strings taken off.
    assert mine["base"]["completion"].to_list() == [f"<reasoning>\nAdding them up gives {g}." for g in golds]
    assert not rows["completion"].str.ends_with("<end_of_turn>").any()
    assert mine["grpo"]["verdict"].to_list() == [None, None, "wrong_step"]
    assert mine["grpo"]["verdict_detail"][2] == "false: 2 + 2 = 5"
    assert mine["sft"]["verdict"].to_list()[1:] == ["bad_format", "wrong_answer"]
    assert mine["base"]["answer"].to_list() == golds
    # Strict accuracy never exceeds answer accuracy: a kept completion's answer is its final answer.
    assert not (rows["strict"] & ~rows["answer_correct"]).any()
    # The paired tests count the problems only one of two consecutive models solves.
    base_sft, sft_grpo = result.stats.comparisons
    assert base_sft["accuracy"] == {"b": 0, "c": 1, "p": 1.0}
    assert base_sft["answer_accuracy"] == {"b": 1, "c": 0, "p": 1.0}
    assert sft_grpo["accuracy"] == {"b": 0, "c": 1, "p": 1.0} and sft_grpo["n"] == 3


def test_pass_at_k_counts_a_problem_solved_by_any_sample():
    rows = pl.DataFrame({"model": ["base"] * 6, "greedy": [True, True, False, False, False, False],
                         "sample_idx": [0, 0, 0, 1, 0, 1], "problem_id": ["a", "b", "a", "a", "b", "b"],
                         "strict": [False, False, False, True, False, False], "formatted": [True] * 6,
                         "answer_correct": [True, False, False, True, False, False]})
    assert evaluate.summarize(rows) == {"base": {
        "accuracy": 0.0, "accuracy_ci": [0.0, 0.6576], "answer_accuracy": 0.5, "answer_accuracy_ci": [0.0945, 0.9055],
        "format": 1.0, "format_ci": [0.3424, 1.0], "counts": {"accuracy": 0, "answer_accuracy": 1, "format": 2},
        "n": 2, "pass_at_k": 0.5, "k": 2}}


def test_compare_needs_the_same_problems_for_both_models():
    rows = pl.DataFrame({"model": ["base", "sft"], "greedy": [True, True], "problem_id": ["a", "b"],
                         "strict": [True, False], "answer_correct": [True, False]})
    with pytest.raises(ValueError, match="base and sft answered different problems"):
        evaluate.compare(rows)


def _entry(strict: int, answer: int, formatted: int, n: int, prompt: str) -> dict:
    """An eval.json model entry from counts."""
    entry = {"n": n, "prompt": prompt}
    for key, hits in (("accuracy", strict), ("answer_accuracy", answer), ("format", formatted)):
        entry |= {key: hits / n, f"{key}_ci": [round(x, 4) for x in significance.wilson(hits, n)]}
    return entry


def test_table_shows_intervals_p_values_and_what_is_not_significant():
    report = {"base": _entry(0, 4, 0, 32, evaluate.FEW_SHOT), "sft": _entry(8, 10, 30, 32, evaluate.CHAT),
              "comparisons": [{"from": "base", "to": "sft", "n": 32, "accuracy": {"b": 0, "c": 8, "p": 0.0078125},
                               "answer_accuracy": {"b": 2, "c": 8, "p": 0.109375}}],
              "set": {"problems": 32, "overlap_with_train": 0, "decontaminated_from_training": 5},
              "missing": ["grpo"]}
    lines = evaluate.table(report).splitlines()
    assert lines[:2] == ["| model | prompt | strict accuracy [95% CI] | answer accuracy [95% CI] | format [95% CI] | n |",
                         "|---|---|---:|---:|---:|---:|"]
    assert lines[2] == (f"| base | {evaluate.FEW_SHOT} | 0.000 [0.000, 0.107] | 0.125 [0.050, 0.281] | "
                        f"0.000 [0.000, 0.107] | 32 |")
    assert lines[3].startswith("| sft | chat template") and "0.250 [0.133, 0.421]" in lines[3]
    assert lines[4] == "| grpo | not run | | | | |"
    assert "| base -> sft | 32 | 0 / 8 | 0.00781 | 2 / 8 | 0.109 (not significant) |" in lines
    assert lines[-1] == ("Held-out problems: 32; with the text of a training problem: 0; training problems removed "
                         "by dedup as copies of eval-set problems: 5.")


def _right_answers(prompt: str) -> str:
    problem = json.loads(prompt)[-1]["content"]
    value = eval(problem.split(":")[-1].replace("=", "").strip(), {"__builtins__": {}})  # noqa: S307 - our generator
    return format_trace(f"Adding from left to right gives {value}.", str(value))


def _curate(run, pulling: PullConfig, deduping: DedupConfig) -> None:
    """Pull, dedup, generate (a fake OpenAI teacher, always right), filter and build a run."""
    pull.run(run, pulling)
    dedup.run(run, deduping)
    with FakeOpenAI(answer=_right_answers) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake", n=1,
                                        api_key_env="NO_KEY_NEEDED"))
    filters.run(run, FilterConfig())
    build.run(run, BuildConfig(val_fraction=0.3, drop_zero_advantage=False), student="tiny-gemma3", seed=5)


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    """A small real run up to the cards (fake OpenAI teacher, always right)."""
    home = tmp_path_factory.mktemp("home")
    run = home / "runs" / "arith" / "v1"
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        _curate(run, PullConfig(seed=5, sources=[ProceduralSource(task="chain_sum", n=16)]), DedupConfig())
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
    assert held.description["decontaminated_from_training"] == 0  # dedup had no eval sets here
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
    assert results == {"accuracy": report["grpo"]["accuracy"], "answer_accuracy": report["grpo"]["answer_accuracy"],
                       "format_compliance": 1.0}
    assert "95% Wilson interval" in card.text and "McNemar" in card.text
    assert card.data.datasets == ["../../cards/sft", "../../cards/grpo"] and card.data.base_model is None
    assert evaluate.table(report) in card.text and "grpo:" in card.text  # the table and the training config
    assert manifest.outputs["../grpo/model/README.md"] == store.file_hash(path)
    # Data cards are about data: evaluation neither rewrites them nor makes the cards stage stale.
    assert {p: store.file_hash(p) for p in data_cards} == data_cards
    assert "Evaluation" not in (built_run / "cards" / "grpo" / "README.md").read_text()
    assert cards.run(built_run, seed=5) == cards_manifest


def test_held_out_problems_are_held_out_by_text_from_the_built_sets(tmp_path, monkeypatch):
    """Training and held-out problems of one generator, two seeds, share texts; dedup takes them out of training."""
    monkeypatch.setenv("HOME", str(tmp_path))
    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "allow_negation": False}
    held = ProceduralSource(task="chain_sum", n=20, seed=77, options=one_digit)
    config = Config(seed=5, sources=[ProceduralSource(task="chain_sum", n=40, options=one_digit)],
                    student=StudentConfig(model="tiny-gemma3"), eval=EvalConfig(sets=[held], limit=None))
    run = tmp_path / "runs" / "arith" / "v1"
    _curate(run, config.pull_stage(), config.dedup_stage())  # as `distillery run` calls the stages
    held_raw = evaluate.held_out(run, config).problems["problem"].to_list()
    held_texts = set(minhash.normalize_many(held_raw))
    pulled = store.finished(run, "pull").read()["problem"].to_list()
    assert sum(text in set(held_raw) for text in pulled) == 2  # character for character, before dedup
    assert sum(text in held_texts for text in minhash.normalize_many(pulled)) == 5  # after dedup's normalization
    built = store.finished(run, "build")
    for name in ("data.parquet", formats.SFT_SET):
        texts = built.read(name)["problem"].to_list()
        assert texts and not held_texts & set(minhash.normalize_many(texts)) and not set(held_raw) & set(texts), name
    description = evaluate.held_out(run, config).description
    assert description["overlap_with_train"] == 0
    removed = pl.read_parquet(run / "dedup" / "rejected.parquet").filter(pl.col("reject_reason") == "contaminated")
    assert description["decontaminated_from_training"] == removed.height >= 5
    assert description["decontaminated_by_set"] == {"procedural/chain_sum (seed 77)": removed.height}
    # The SFT data card shows the contamination found, against the eval set by name.
    cards.run(run, seed=5)
    card = (run / "cards" / "sft" / "README.md").read_text()
    assert f"| procedural/chain\\_sum (seed 77) | 20 | {removed.height} |" in card  # markdown escapes the _


@pytest.mark.parametrize(("text", "found"), [
    ("<reasoning>2 + 2 = 4</reasoning><answer> 4 </answer> and 9 more", "4"),  # the answer block wins
    ("<answer>3</answer> then <answer>5</answer>", "5"),  # the last block
    ("<reasoning>7 * 3 = 21</reasoning><answer>21", "21"),  # cut before its closing tag
    ("So the result is \\boxed{\\frac{3}{4}}, not 7", "\\frac{3}{4}"),  # a box before a later number
    ("first \\boxed{1}, finally \\boxed{2}.", "2"),
    ("The answer is -3/4.", "-3/4"),  # sign and fraction read whole
    ("It costs $1,080 in all", "1,080"),
    ("pi is about 3.14.", "3.14"),
    ("12 - 3 = 9", "9"),
    ("x-3", "3"),  # a minus after a letter is an operator
    ("(-3)", "-3"),
    ("an unclosed \\boxed{12 and then 5", "5"),  # an unclosed box holds no answer
    ("no number at all", None), ("", None), (None, None),
])
def test_final_answer_reads_the_answer_wherever_written(text, found):
    from curation import answers

    assert answers.final_answer(text) == found


def test_final_answer_takes_linear_time_on_hostile_text():
    from curation import answers

    started = time.perf_counter()
    for hostile in ("1," * 100_000, "-" * 200_000 + "1", "\\boxed{" * 50_000, "<answer>" * 50_000, "1." * 100_000):
        answers.final_answer(hostile)
    assert time.perf_counter() - started < 2.0  # a backtracking pattern takes minutes on these
