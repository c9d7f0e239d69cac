"""The Prefect flows against a real Prefect API (prefect_test_harness): order, skips, resume after a fault."""

from __future__ import annotations

import json
import re
import time

import pytest

from curation.sources import procedural
from flows import stages
from flows.secrets import SecretError
from machinery import store
from machinery.config import load_config
from tests.conftest import prefect_harness, write_jsonl
from tests.support.fake_openai import FakeOpenAI
from tests.support.markdown import bare_tags

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def prefect_api():
    """One throwaway Prefect server (SQLite) for the module: 8-10 s to start."""
    with prefect_harness():
        yield


def _solver(config):
    """A fake teacher answer: the right sum for a pulled problem, in the trace format."""
    source = config.sources[0]
    problems, _ = procedural.load(source.task, source.n, config.seed, **source.options)
    golds = dict(zip(problems["problem"].to_list(), problems["answer"].to_list(), strict=True))

    def answer(prompt: str) -> str:
        # The problem asked is the last one in the prompt (few-shot examples come first).
        asked = max(golds, key=lambda p: prompt.rfind(json.dumps(p)[1:-1]))
        return f"<reasoning>Add the two numbers: the sum is {golds[asked]}.</reasoning><answer>{golds[asked]}</answer>"

    return answer


@pytest.mark.slow  # every stage, training included, three times: minutes on 2 cores (make test-slow)
def test_curate_and_train_resumes_at_the_failed_stage(prefect_api, tmp_path, monkeypatch):
    """A generate fault fails the flow; the re-run skips pull and dedup and recomputes from generate on."""
    from flows import pipeline

    config = load_config("tiny")
    with FakeOpenAI(answer=_solver(config)) as teacher:
        config = load_config("tiny", sets=["teacher.backend=openai", f"teacher.base_url={teacher.base_url}",
                                           "teacher.model=fake", "teacher.style=chat", "teacher.api_key_env=null",
                                           "build.drop_zero_advantage=false", "filter.min_tokens=1"])
        run_dir = tmp_path / "runs" / "tiny" / "v1"
        generate = stages.RUNNERS["generate"]
        calls = []

        def failing_once(*args):
            calls.append(args)
            if len(calls) == 1:
                raise ConnectionError("injected fault: the teacher endpoint went away")
            return generate(*args)

        monkeypatch.setitem(stages.RUNNERS, "generate", failing_once)
        monkeypatch.setattr(pipeline, "RETRIES", {})  # the fault must reach the flow, not a task retry
        with pytest.raises(ConnectionError, match="injected fault"):
            pipeline.curate_and_train(run_dir=str(run_dir), config=config)
        assert store.complete_manifest(run_dir / "dedup") is not None
        assert store.complete_manifest(run_dir / "generate") is None
        pull_manifest = store.Manifest.read(run_dir / "pull" / "manifest.json")

        results = pipeline.curate_and_train(run_dir=str(run_dir), config=config)

    assert [r["stage"] for r in results] == list(stages.STAGES)  # each stage once: no second cards pass
    skipped = {r["stage"]: r["skipped"] for r in results}
    assert skipped == {"pull": True, "dedup": True, **{s: False for s in stages.STAGES[2:]}}
    assert store.Manifest.read(run_dir / "pull" / "manifest.json") == pull_manifest
    assert len(calls) == 2
    for stage in stages.STAGES:
        assert store.complete_manifest(run_dir / stage) is not None, stage
    assert json.loads((run_dir / "filter" / "stats.json").read_text())["kept"] > 0  # SFT had traces to learn
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert {"base", "sft", "grpo"} <= evaluation.keys()
    assert "| base |" in (run_dir / "grpo" / "model" / "README.md").read_text()  # the model card has the table
    assert "| base |" not in (run_dir / "cards" / "grpo" / "README.md").read_text()  # data cards: data only

    # A third run recomputes nothing.
    again = pipeline.curate_and_train(run_dir=str(run_dir), config=config)
    assert all(r["skipped"] for r in again)


def test_stage_flow_publishes_card_artifacts(prefect_api, tmp_path):
    """The cards flow publishes each card as a markdown artifact under a lowercase-dash key."""
    from prefect.client.orchestration import get_client

    from flows import pipeline

    run_dir = tmp_path / "runs" / "Tiny_Set" / "v1"
    with FakeOpenAI() as teacher:  # the cards are the point, not the traces: no model to load
        config = load_config("tiny", sets=["teacher.n=1", "teacher.backend=openai", "teacher.model=fake",
                                           f"teacher.base_url={teacher.base_url}", "teacher.style=chat",
                                           "teacher.api_key_env=null"])
        for stage in stages.CURATION:
            pipeline.STAGE_FLOWS[stage](run_dir=str(run_dir), config=config)

    async def artifacts() -> dict[str, str]:
        async with get_client() as client:
            return {a.key: a.data for a in await client.read_artifacts() if a.key}

    import asyncio

    found = asyncio.run(artifacts())
    assert {"tiny-set-v1-sft-card", "tiny-set-v1-grpo-card"} <= set(found)
    assert all(re.fullmatch(r"[a-z0-9-]+", key) for key in found)
    for key in ("tiny-set-v1-sft-card", "tiny-set-v1-grpo-card"):
        markdown = found[key]
        assert not markdown.startswith("---") and "## Funnel" in markdown  # no front matter, the card body
        images = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", markdown)
        assert images and all(src.startswith("data:image/png;base64,") for src in images)
        assert not bare_tags(markdown)  # every tag escaped or in code


def test_refresh_writes_a_version_only_with_new_rows(prefect_api, tmp_path):
    """Refresh adds v2 with only unseen problems; when nothing new survives dedup, no version is written."""
    from flows import pipeline

    # What the traces say does not matter here: a fake teacher, as a model would only cost time.
    with FakeOpenAI() as teacher:
        fake = ["teacher.n=1", "teacher.backend=openai", f"teacher.base_url={teacher.base_url}", "teacher.model=fake",
                "teacher.style=chat", "teacher.api_key_env=null"]
        dataset = tmp_path / "runs" / "tiny"
        config = load_config("tiny", sets=fake)
        first = pipeline.refresh(dataset_dir=str(dataset), config=config)
        second = pipeline.refresh(dataset_dir=str(dataset), config=config)
        assert (first["version"], second["version"]) == ("v1", "v2")
        assert first["new_rows"] > 0 and second["new_rows"] > 0  # a new seed, new problems
        v1 = set(store.finished(dataset / "v1", "dedup").read()["problem"].to_list())
        v2 = set(store.finished(dataset / "v2", "dedup").read()["problem"].to_list())
        assert v1 and v2 and not v1 & v2  # nothing re-added
        assert (dataset / "v2" / "cards" / "sft" / "README.md").is_file()

        # A Hub file that has not changed: the second refresh finds nothing new and writes no version.
        hub = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": f"Tom has {i} apples and buys {i + 3} more. "
                                                                   f"How many apples does he have?",
                                                      "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"}
                                                     for i in range(1, 5)])
        hub_source = f"sources=[{{kind: hub, id: openai/gsm8k, split: test, data_files: '{hub}'}}]"
        fixed = load_config("tiny", sets=[*fake, hub_source])
        gsm = tmp_path / "runs" / "gsm"
        assert pipeline.refresh(dataset_dir=str(gsm), config=fixed)["kept"]
        nothing_new = pipeline.refresh(dataset_dir=str(gsm), config=fixed)
    assert nothing_new == {"version": "v2", "seed": fixed.seed + 2, "new_rows": 0, "kept": False}
    assert sorted(p.name for p in gsm.glob("v*")) == ["v1"]
    assert [a["kept"] for a in json.loads((gsm / "refresh.json").read_text())] == [True, False]


def test_teacher_key_comes_from_a_prefect_secret_block_and_is_never_written(prefect_api, tmp_path, caplog):
    from prefect.blocks.system import Secret

    secret = "sk-test-5ecret-d0-not-log"
    Secret(value=secret).save("teacher-key", overwrite=True)
    with FakeOpenAI() as teacher:
        config = load_config("tiny", sets=["teacher.backend=openai", f"teacher.base_url={teacher.base_url}",
                                           "teacher.model=fake", "teacher.api_key_block=teacher-key"])
        run_dir = tmp_path / "run"
        with caplog.at_level("DEBUG"):
            for stage in ("pull", "dedup", "generate"):
                stages.run(stage, run_dir, config)
        assert teacher.requests > 0 and teacher.authorizations == {f"Bearer {secret}"}
    assert secret not in caplog.text
    assert not [p for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]

    missing = config.model_copy(update={"teacher": config.teacher.model_copy(update={"api_key_block": "no-such"})})
    with pytest.raises(SecretError, match="teacher.api_key_block='no-such'"):
        stages.run("generate", run_dir, missing, force=True)


def test_a_second_flow_on_the_same_folder_waits_in_prefect(prefect_api, tmp_path):
    """With the folder's concurrency limit (distillery serve creates it), a second run queues, then skips."""
    import threading

    from prefect import get_client

    from curation import dedup, pull
    from flows import pipeline
    from machinery.config import DedupConfig, ProceduralSource, PullConfig

    run_dir = tmp_path / "runs" / "queued" / "v1"
    pull.run(run_dir, PullConfig(seed=3, sources=[ProceduralSource(task="basic_arithmetic", n=4)]))
    dedup.run(run_dir, DedupConfig())
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(pipeline.limit_name(run_dir), limit=1)
    finished: dict[str, tuple[float, dict]] = {}
    with FakeOpenAI(latency_s=3) as teacher:
        config = load_config("tiny", sets=["teacher.backend=openai", f"teacher.base_url={teacher.base_url}",
                                           "teacher.model=fake", "teacher.n=1"])

        def run(name: str) -> None:
            result = pipeline.generate_flow(run_dir=str(run_dir), config=config)
            finished[name] = (time.time(), result)

        first = threading.Thread(target=run, args=("first",))
        first.start()
        time.sleep(1.0)
        second = threading.Thread(target=run, args=("second",))
        second_started = time.time()
        second.start()
        first.join(120)
        second.join(120)
        assert teacher.requests == 4  # the second run asked nothing: it waited, then found the output complete
    assert finished["first"][1]["skipped"] is False and finished["second"][1]["skipped"] is True
    # The second started before the first's output was complete and returned after it: it waited. (Not
    # "after the first returned": the first frees the folder before Prefect records its final state.)
    assert second_started < (run_dir / "generate" / "manifest.json").stat().st_mtime <= finished["second"][0]
