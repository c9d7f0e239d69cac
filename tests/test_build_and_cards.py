"""Build the SFT and GRPO sets from a small real run, then judge the data cards by what they say."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil

import datasets
import polars as pl
import pytest
import yaml

from curation import answers, build, dedup, filters, generate, pull, verifier
from data_cards import cards
from machinery import stats, store
from machinery.config import (
    BuildConfig,
    DedupConfig,
    FilterConfig,
    ProceduralSource,
    PullConfig,
    TeacherConfig,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.markdown import bare_tags

SECRET = "sk-test-secret-not-for-cards-123"


def _teacher_answer():
    """Per problem: always right, always wrong, or alternating (pass rates 1, 0, 0.5)."""
    calls: collections.Counter[str] = collections.Counter()

    def answer(prompt: str) -> str:
        problem = json.loads(prompt)[-1]["content"]
        expression = problem.split(":")[-1].replace("=", "").strip()
        value = eval(expression, {"__builtins__": {}})  # noqa: S307 - our own generator's arithmetic
        calls[problem] += 1
        mode = sum(map(ord, problem)) % 3
        right = mode == 0 or (mode == 2 and calls[problem] % 2 == 1)
        shown = value if right else value + 1
        return (f"<reasoning>\nFrom left to right, {expression} = {value}. So we get {shown}.\n</reasoning>\n"
                f"<answer>\n{shown}\n</answer>")

    return answer


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    run = home / "runs" / "arith" / "v1"
    old_home, old_key = os.environ.get("HOME"), os.environ.get("OPENAI_API_KEY")
    os.environ["HOME"], os.environ["OPENAI_API_KEY"] = str(home), SECRET  # the card must show neither
    try:
        pull.run(run, PullConfig(seed=4, sources=[ProceduralSource(task="chain_sum", n=40)]))
        dedup.run(run, DedupConfig())
        with FakeOpenAI(supports_n=False, answer=_teacher_answer()) as server:
            generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake-teacher", n=2))
        filters.run(run, FilterConfig())
        build.run(run, BuildConfig(val_fraction=0.25), student="gemma3-270m", seed=4)
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": 4, "teacher": {"api_key_env": "OPENAI_API_KEY"},
                                                         "note": f"{home}/somewhere"}))
        cards.run(run, seed=4)
        yield run
    finally:
        for name, value in (("HOME", old_home), ("OPENAI_API_KEY", old_key)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_no_problem_is_in_both_splits(built_run):
    for frame in (pl.read_parquet(built_run / "build" / "sft.parquet"), store.finished(built_run, "build").read()):
        by_split = frame.group_by("problem_id").agg(pl.col("split").n_unique())
        assert (by_split["split"] == 1).all()
        assert set(frame["split"]) == {"train", "validation"}


def test_every_sft_completion_passes_format_and_correctness(built_run):
    sft = pl.read_parquet(built_run / "build" / "sft.parquet")
    traces = [m[1]["content"] for m in sft["messages"].to_list()]
    assert all(answers.format_problem(t) is None for t in traces)
    assert [c for c in sft["completion"]] == [t + "<end_of_turn>" for t in traces]
    assert all(p.startswith("<start_of_turn>user\n") and p.endswith("<start_of_turn>model\n") for p in sft["prompt"])
    problems = store.finished(built_run, "dedup").read().join(sft.select(pl.col("problem_id").alias("id")), on="id")
    metas = dict(zip(problems["id"], problems["meta"]))
    verdict = verifier.verdicts(traces, sft["gold"].to_list(), sft["source"].to_list(),
                                [metas[i] for i in sft["problem_id"]])
    assert verdict == [True] * sft.height


def test_grpo_set_drops_zero_advantage_problems_with_a_count(built_run):
    grpo = store.finished(built_run, "build").read()
    rejected = pl.read_parquet(built_run / "build" / "rejected.parquet")
    assert grpo["pass_rate"].is_between(0, 1, closed="none").all()
    assert set(rejected["reject_reason"]) == {"zero_advantage_all_solved", "zero_advantage_none_solved"}
    assert grpo.height + rejected.height == store.finished(built_run, "dedup").read().height
    assert (grpo["difficulty"] == 1 - grpo["pass_rate"]).all()


def test_sets_load_as_hugging_face_datasets(built_run):
    sft = datasets.load_from_disk(str(built_run / "build" / "hf" / "sft"))
    grpo = datasets.load_from_disk(str(built_run / "build" / "hf" / "grpo"))
    assert set(sft) == set(grpo) == {"train", "validation"}
    assert sft["train"].num_rows + sft["validation"].num_rows == pl.read_parquet(built_run / "build" / "sft.parquet").height
    assert "prompt" in grpo["train"].column_names and "gold" in grpo["train"].column_names


def _front_matter(path) -> dict:
    text = path.read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "no YAML front matter"
    return yaml.safe_load(match.group(1))


@pytest.mark.parametrize("which", ["sft", "grpo"])
def test_card_front_matter_parses_and_names_license_size_and_configs(built_run, which):
    meta = _front_matter(built_run / "cards" / which / "README.md")
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train.parquet"}


@pytest.mark.parametrize("which", ["sft", "grpo"])
def test_card_funnel_equals_the_stage_files(built_run, which):
    card = json.loads((built_run / "cards" / which / "card.json").read_text())
    for row in card["facts"]["funnel"]:
        stage = built_run / row["stage"]
        assert row["out"] == pl.read_parquet(stage / "data.parquet").height
        assert row["rejected"] == pl.read_parquet(stage / "rejected.parquet").height
        assert row["in"] == row["out"] + row["rejected"]
        rejected = pl.read_parquet(stage / "rejected.parquet")
        assert row["reasons"] == dict(collections.Counter(rejected["reject_reason"].to_list()))
    text = (built_run / "cards" / which / "README.md").read_text()
    generate_row = next(r for r in card["facts"]["funnel"] if r["stage"] == "generate")
    assert f"| generate | samples | {generate_row['in']} | {generate_row['out']} |" in text


@pytest.mark.parametrize("which", ["sft", "grpo"])
def test_card_plots_are_valid_pngs(built_run, which):
    card = json.loads((built_run / "cards" / which / "card.json").read_text())
    assert len(card["plots"]) == 2
    for plot in card["plots"]:
        data = (built_run / "cards" / which / plot["path"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert f"![{plot['title']}]({plot['path']})" in (built_run / "cards" / which / "README.md").read_text()


def test_card_has_examples_hashes_teacher_and_reproduce_command(built_run):
    card = json.loads((built_run / "cards" / "sft" / "card.json").read_text())
    assert len(card["examples"]) == 5
    assert card["facts"]["teacher"]["model"] == "fake-teacher" and card["facts"]["teacher"]["n"] == 2
    assert card["hashes"]["data/train.parquet"] == store.file_hash(built_run / "cards" / "sft" / "data" / "train.parquet")
    assert card["commands"][0] == "distillery pull --run runs/arith/v1 --config config.yaml"
    text = (built_run / "cards" / "sft" / "README.md").read_text()
    assert "not** decontaminated" in text  # no eval sets configured: the card must say so
    # the one endpoint's record, from the generate stats: 40 problems x 2 samples, one request each (no native n)
    endpoints = stats.read(built_run, "generate", generate.GenerateStats).endpoints
    (url, counts), = endpoints.items()
    assert counts == {"requests": 80, "successes": 80, "failures": 0, "benched": 0}
    assert card["facts"]["teacher"]["endpoints"].endswith(": 80 requests, 80 answered, 0 failed")
    assert "| endpoints | `http://127.0.0.1:" in text and ": 80 requests, 80 answered, 0 failed |" in text


@pytest.mark.parametrize("which", ["sft", "grpo"])
def test_cards_hold_no_secret_and_no_home_or_absolute_path(built_run, which):
    home = str(built_run.parents[2])
    for name in ("README.md", "card.json"):
        text = (built_run / "cards" / which / name).read_text()
        assert SECRET not in text
        assert home not in text and "/tmp/" not in text and "/root" not in text


def test_card_summary_fits_one_screen(built_run, capsys):
    from flows import cli

    assert cli.main(["card", str(built_run)]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    assert len(out) <= 24 and all(len(line) <= 120 for line in out)
    assert out[0].startswith("SFT card: ") and out[0].endswith("cards/sft/README.md")


def test_rerun_of_cards_is_skipped(built_run):
    before = store.Manifest.read(built_run / "cards" / "manifest.json")
    assert cards.run(built_run, seed=4).started_at == before.started_at


def test_sft_card_shows_the_verifier_audit_and_rejected_examples(built_run):
    text = (built_run / "cards" / "sft" / "README.md").read_text()
    filtered = stats.read(built_run, "filter", filters.FilterStats)
    audit = filtered.audit
    assert audit["checked"] > 0 and audit["step_claims_checked"] > 0
    assert f"| answers checked (math-verify) | {audit['checked']} |" in text
    assert f"| arithmetic claims in traces checked exactly | {audit['step_claims_checked']} |" in text
    wrong = filtered.examples["wrong_answer"]
    assert len(wrong) == 2 and f"`{wrong[0]['detail']}`" in text


def test_a_renamed_stats_field_fails_the_cards_at_load_naming_file_and_field(built_run, tmp_path):
    from flows import report

    run = tmp_path / "runs" / "arith" / "v1"
    shutil.copytree(built_run, run)
    path = run / "dedup" / store.STATS
    payload = json.loads(path.read_text())
    payload["lsh_rows"] = payload.pop("rows_per_band")  # as a stage from other code would have written it
    store.write_json(payload, path)
    manifest = json.loads((run / "dedup" / store.MANIFEST).read_text())
    manifest["outputs"][store.STATS] = store.file_hash(path)  # a complete stage, only its record differs
    store.write_json(manifest, run / "dedup" / store.MANIFEST)
    card_before = (run / "cards" / "sft" / "README.md").read_text()
    expected = rf"^{re.escape(str(path))}: unknown field 'lsh_rows'; missing field 'rows_per_band'"
    with pytest.raises(stats.StatsError, match=expected):
        cards.run(run, seed=4, force=True)
    assert (run / "cards" / "sft" / "README.md").read_text() == card_before  # nothing rendered from it
    with pytest.raises(stats.StatsError, match=expected):
        report.stage_line("dedup", run)


def test_card_shows_contamination_evidence_side_by_side(tmp_path):
    from tests.conftest import write_jsonl

    run = tmp_path / "runs" / "leaky" / "v1"
    pull.run(run, PullConfig(seed=4, sources=[ProceduralSource(task="chain_sum", n=12)]))
    leaked = store.finished(run, "pull").read()["problem"].to_list()[:2]
    bench = write_jsonl(tmp_path / "bench" / "test.jsonl", [{"question": q, "answer": "#### 1"} for q in leaked])
    dedup.run(run, DedupConfig(eval_sets=[{"id": "openai/gsm8k", "split": "test", "data_files": str(bench)}]))
    with FakeOpenAI(supports_n=False, answer=_teacher_answer()) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake-teacher", n=2))
    filters.run(run, FilterConfig())
    build.run(run, BuildConfig(val_fraction=0.25), student="gemma3-270m", seed=4)
    cards.run(run, seed=4)
    text = (run / "cards" / "sft" / "README.md").read_text()
    assert "| openai/gsm8k | 2 | 2 |" in text  # items, training problems removed
    assert "Removed as contaminated by openai/gsm8k, side by side" in text
    removed = pl.read_parquet(run / "dedup" / "rejected.parquet")
    for row in removed.iter_rows(named=True):
        assert row["benchmark"] == "openai/gsm8k" and row["jaccard"] == 1.0
        assert f"`{row['id']}`: {row['problem']} | `{row['benchmark_id']}`: {row['problem']} |" in text


def _hostile_file(path) -> tuple[int, dict[str, str]]:
    """A GSM8K-format file: 10 good rows (one with HTML and markdown) and one row of each hostile kind.

    Returns the good count and, per hostile source row, the reason it must be rejected with.
    """
    good = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many apples now?",
             "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"} for i in range(9)]
    good.append({"question": "<script>alert(1)</script> <b>Sam</b> has 2 pens and\n# gets\n```\n3 more. How many?",
                 "answer": "2 + 3 = 5\n#### 5"})
    hostile = [
        (json.dumps({"question": "NUL\u0000 and BEL\u0007 inside", "answer": "#### 2"}).encode(), "control_characters"),
        (b'{"question": "bad bytes \xff\xfe here", "answer": "#### 1"}', "invalid_utf8"),
        (json.dumps({"question": "x " * 5_000_000, "answer": "#### 3"}).encode(), "too_long"),
        (json.dumps({"question": 12345, "answer": "#### 5"}).encode(), "wrong_type"),
        (json.dumps({"question": "Text where a number belongs?", "answer": "#### seventy"}).encode(),
         "unparsable_answer"),
        (json.dumps({"question": "A NaN gold?", "answer": "#### nan"}).encode(), "non_finite_answer"),
        (b"[" * 100_000 + b"]" * 100_000, "nested_too_deep"),
        (b"this line is not JSON", "malformed_row"),
    ]
    lines = [json.dumps(row).encode() for row in good]
    expected = {}
    for line, reason in hostile:
        expected[f"train/{len(lines)}"] = reason
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(good), expected


def test_hostile_rows_are_counted_rejects_and_the_card_escapes_row_text(tmp_path):
    data = tmp_path / "hostile" / "train.jsonl"
    data.parent.mkdir()
    good, expected = _hostile_file(data)
    run = tmp_path / "runs" / "hostile" / "v1"
    pull.run(run, PullConfig(seed=1, sources=[{"kind": "hub", "id": "openai/gsm8k", "data_files": str(data)}]))
    rejected = pl.read_parquet(run / "pull" / "rejected.parquet")
    assert dict(zip(rejected["source_id"], rejected["reject_reason"])) == expected
    assert store.finished(run, "pull").read().height == good
    dedup.run(run, DedupConfig())

    def teacher(prompt: str) -> str:  # right answers, in text a model might write: tags, fences, HTML
        answer = "5" if "Sam" in prompt else str(2 * int(re.findall(r"has (\d+) apples", prompt)[-1]) + 3)
        return (f"<reasoning>\n<b>Adding</b> ``` fenced? ``` <div>\n# not a heading\n</div> gives {answer}.\n"
                f"</reasoning>\n<answer>\n{answer}\n</answer>")

    with FakeOpenAI(supports_n=False, answer=teacher) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake-teacher", n=1))
    filters.run(run, FilterConfig(min_tokens=1))
    build.run(run, BuildConfig(val_fraction=0.25, drop_zero_advantage=False), student="gemma3-270m", seed=1)
    cards.run(run, seed=1)
    for which in ("sft", "grpo"):
        text = (run / "cards" / which / "README.md").read_text()
        assert not [line for line in text.splitlines() if line.startswith("<")]
        assert not bare_tags(text)  # row text is escaped or in code, whatever it holds


def _load_card_folder(folder) -> dict[str, int]:
    """`datasets.load_dataset(folder)` as a Hub user would open the card's repo: rows per split."""
    loaded = datasets.load_dataset(str(folder))
    return {split: loaded[split].num_rows for split in loaded}


def test_card_folders_load_with_datasets_even_with_an_empty_validation_split(built_run, tmp_path):
    for which in ("sft", "grpo"):
        sizes = json.loads((built_run / "cards" / which / "card.json").read_text())["sizes"]
        assert _load_card_folder(built_run / "cards" / which) == sizes  # both splits have rows here
    run = tmp_path / "runs" / "novalidation" / "v1"
    pull.run(run, PullConfig(seed=4, sources=[ProceduralSource(task="chain_sum", n=8)]))
    dedup.run(run, DedupConfig())
    with FakeOpenAI(supports_n=False, answer=_teacher_answer()) as server:
        generate.run(run, TeacherConfig(backend="openai", base_url=server.base_url, model="fake-teacher", n=2))
    filters.run(run, FilterConfig())
    build.run(run, BuildConfig(val_fraction=1e-9, drop_zero_advantage=False), student="gemma3-270m", seed=4)
    cards.run(run, seed=4)
    for which in ("sft", "grpo"):
        card = json.loads((run / "cards" / which / "card.json").read_text())
        assert card["sizes"]["validation"] == 0 and card["sizes"]["train"] > 0
        assert _load_card_folder(run / "cards" / which) == {"train": card["sizes"]["train"]}
        assert [c["split"] for c in _front_matter(run / "cards" / which / "README.md")["configs"][0]["data_files"]] \
            == ["train"]
