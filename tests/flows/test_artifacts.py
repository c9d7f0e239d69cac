"""What a flow run's page shows, read back through Prefect's client: stage funnels and progress artifacts."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import defaultdict

import pytest

from flows import progress, stages
from machinery import store
from machinery.config import load_config
from tests.conftest import prefect_harness
from tests.flows.test_pipeline import _solver
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def prefect_api():
    """One throwaway Prefect server (SQLite) for the module: 8-10 s to start."""
    with prefect_harness():
        yield


def _artifacts(prefix: str) -> dict[str, list]:
    """Every version of every artifact whose key starts with `prefix`, oldest first, by key."""
    from prefect.client.orchestration import get_client

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts()

    found = defaultdict(list)
    for artifact in sorted(asyncio.run(read()), key=lambda a: a.created):
        if artifact.key and artifact.key.startswith(prefix):
            found[artifact.key].append(artifact)
    return found


def test_a_pipeline_run_shows_every_stage_funnel_and_long_stage_progress(prefect_api, tmp_path, monkeypatch):
    """Each stage's funnel is a table artifact; each long stage's progress went up as it ran and ended at 100."""
    from flows import pipeline

    reported: dict[str, list[float]] = defaultdict(list)
    call = progress.Reporter.__call__

    def recording(self, fraction):
        reported[self.key].append(fraction)
        call(self, fraction)

    monkeypatch.setattr(progress.Reporter, "__call__", recording)
    config = load_config("tiny")
    with FakeOpenAI(answer=_solver(config)) as teacher:
        config = load_config("tiny", sets=["teacher.backend=openai", f"teacher.base_url={teacher.base_url}",
                                           "teacher.model=fake", "teacher.style=chat", "teacher.api_key_env=null",
                                           "build.drop_zero_advantage=false", "filter.min_tokens=1"])
        run_dir = tmp_path / "runs" / "Arts" / "v1"
        pipeline.curate_and_train(run_dir=str(run_dir), config=config)
        found = _artifacts("arts-v1-")
        again = pipeline.curate_and_train(run_dir=str(run_dir), config=config)
    assert all(r["skipped"] for r in again)

    for stage in stages.STAGES:
        [table] = found[f"arts-v1-{stage}-funnel"]
        assert table.type == "table"
        rows = {row["what"]: row["rows"] for row in json.loads(table.data)}
        manifest = store.Manifest.read(run_dir / stage / store.MANIFEST)
        if stage == "cards":  # no stats record: the manifest's counts
            assert rows == manifest.counts
            continue
        stats = json.loads((run_dir / stage / store.STATS).read_text())
        assert rows == {"rows in": stats["rows_in"], "kept": stats["kept"], "rejected": stats["rejected"],
                        **{f"rejected: {reason}": n for reason, n in stats["reasons"].items()}}, stage
        assert rows["rows in"] == rows["kept"] + rows["rejected"] > 0
    assert json.loads(found["arts-v1-filter-funnel"][0].data)[0]["rows"] == 6 * 2  # tiny: 6 problems, 2 samples

    for stage in stages.STAGES:
        key = f"arts-v1-{stage}-progress"
        if stage not in progress.LONG:
            assert key not in found and key not in reported
            continue
        [artifact] = found[key]
        assert artifact.type == "progress" and float(artifact.data) == 100.0, stage
        fractions = reported[key]
        assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, (stage, fractions)
    assert len(reported["arts-v1-generate-progress"]) == 6 * 2  # one call per sample that landed
    assert reported["arts-v1-sft-progress"] == [0.5, 1.0]  # tiny: 2 steps
    assert reported["arts-v1-eval-progress"] == [1 / 3, 2 / 3, 1.0]  # base, sft, grpo: each answered every problem

    # The second run skipped every stage: it still published each funnel and a progress artifact at 100.
    after = _artifacts("arts-v1-")
    for stage in stages.STAGES:
        assert len(after[f"arts-v1-{stage}-funnel"]) == 2
        assert after[f"arts-v1-{stage}-funnel"][1].data == found[f"arts-v1-{stage}-funnel"][0].data
    for stage in progress.LONG:
        assert [float(a.data) for a in after[f"arts-v1-{stage}-progress"]] == [100.0, 100.0]


def test_progress_reaches_prefect_at_most_once_per_interval(prefect_api, monkeypatch, caplog):
    """Many calls from a busy thread become a few updates, spaced by the interval; finish sends 100."""
    import prefect.artifacts
    from prefect import flow

    sent: list[tuple[float, float]] = []
    update = prefect.artifacts.update_progress_artifact

    def recording(artifact_id, percent, **kwargs):
        sent.append((time.monotonic(), percent))
        return update(artifact_id, percent, **kwargs)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", recording)

    @flow
    def busy() -> None:
        with progress.reporting("busy-progress", "a busy stage") as report:
            worker = threading.Thread(target=lambda: [report(i / 2000) or time.sleep(0.001) for i in range(2001)])
            worker.start()  # like the teacher's client: calls from another thread
            worker.join()

    started = time.monotonic()
    busy()
    elapsed = time.monotonic() - started
    assert sent[-1][1] == 100.0
    assert 2 <= len(sent) <= elapsed / progress.INTERVAL_S + 2  # 2001 calls, a handful of updates
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent[:-1])]  # finish() does not wait
    assert all(gap >= progress.INTERVAL_S * 0.95 for gap in gaps), gaps
    assert "failed" not in caplog.text  # the updates from the reporter's thread reached the API
    percents = [p for _, p in sent]
    assert percents == sorted(percents) and 0 < percents[0] < 100  # it moved while the stage ran
    [artifact] = _artifacts("busy-progress")["busy-progress"]
    assert float(artifact.data) == 100.0


def test_a_failed_stage_progress_stays_where_it_stopped(prefect_api):
    """A stage that raises does not claim to be done."""
    from prefect import flow

    @flow
    def failing() -> None:
        with progress.reporting("failing-progress", "a failing stage") as report:
            report(0.4)
            raise RuntimeError("injected fault")

    with pytest.raises(RuntimeError, match="injected fault"):
        failing()
    [artifact] = _artifacts("failing-progress")["failing-progress"]
    assert float(artifact.data) == 40.0


def test_funnel_rows_name_every_reject_reason(tmp_path):
    """The table lists rows in, kept, rejected, then one row per reason, from the stats record."""
    stage_dir = tmp_path / "filter"
    store.write_json({"rows_in": 10, "kept": 6, "rejected": 4, "reasons": {"wrong_answer": 3, "bad_format": 1},
                      "seconds": 1.0}, stage_dir / store.STATS)
    manifest = store.Manifest(stage="filter", key="k", config={}, inputs={}, outputs={},
                              counts={"rows_in": 10, "kept": 6, "rejected": 4}, code_version="", started_at="",
                              seconds=1.0)
    assert progress.funnel(stage_dir, manifest) == [
        {"what": "rows in", "rows": 10}, {"what": "kept", "rows": 6}, {"what": "rejected", "rows": 4},
        {"what": "rejected: bad_format", "rows": 1}, {"what": "rejected: wrong_answer", "rows": 3}]
