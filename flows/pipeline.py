"""Prefect flows: one per stage, `curate-and-train` calling them in order, and `refresh`.

Flows only orchestrate: each stage flow runs its stage as one coarse task through
`flows.stages.run`, which skips a stage whose manifest key matches a complete output. So a
new `curate-and-train` run after a failure recomputes only the failed stage and what
follows. Paths and configs cross task boundaries, never data frames; no Prefect result
caching is used (it would key on path strings, not on the content behind them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Stage modules log through the standard library; Prefect forwards these loggers to the run's
# log in the UI. Set before Prefect is imported, which reads its settings once.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "curation,training,data_cards")

from prefect import Flow, flow, get_run_logger, runtime, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.concurrency.sync import concurrency  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402

from flows import stages  # noqa: E402
from flows.progress import LONG, publish_funnel, reporting  # noqa: E402
from flows.stages import STAGE_HELP  # noqa: E402
from machinery import redact, runlock, store  # noqa: E402
from machinery.config import Config  # noqa: E402

# Safe to retry: a teacher endpoint may fail transiently, and the request cache keeps what was done.
RETRIES = {"generate": 2}


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _run_name(run_dir: Path) -> str:
    """`<dataset>-<version>` from runs/<dataset>/<version>."""
    return f"{run_dir.parent.name}-{run_dir.name}"


def limit_name(run_dir: Path) -> str:
    """The Prefect global concurrency limit of the dataset folder holding `run_dir` (one writer at a time)."""
    return "distillery" + re.sub(r"[^A-Za-z0-9]+", "-", str(runlock.lock_path(run_dir).parent))


@contextlib.contextmanager
def writing(run_dir: Path, what: str, *, wait: bool, lock_owner: str | None) -> Iterator[None]:
    """Hold the dataset folder for a flow: a slot of its Prefect concurrency limit, then the file lock.

    A top-level flow run queues on the limit (created by `distillery serve` for every
    deployment's folder; without it this step is a no-op); subflows and handed-off stages run
    under their parent's hold. The file lock is what a second writer outside Prefect meets.
    """
    top_level = runtime.flow_run.parent_flow_run_id is None and lock_owner is None
    if top_level:
        _release_leaked_slot(limit_name(run_dir), run_dir)
    # The shortest lease Prefect allows: renewed while this process lives, so a killed flow run's slot
    # frees within about a minute instead of five (while the server that granted it keeps running).
    queue = (concurrency(limit_name(run_dir), occupy=1, strict=False, lease_duration=60) if top_level
             else contextlib.nullcontext())
    with queue, runlock.hold(run_dir, what, flow_run_id=runtime.flow_run.id, wait=wait, inherit_from=lock_owner):
        yield


def _release_leaked_slot(name: str, run_dir: Path) -> None:
    """Free the folder's concurrency slot when it is taken but nobody writes the folder.

    Prefect keeps slot leases in the server's memory: a server killed while a flow held the
    slot comes back with the slot taken and no lease to expire, and every later run would
    wait forever. Whoever holds the slot also holds the file lock while it works, so a free
    file lock with a full limit means a leaked slot. (If its holder was just about to take
    the file lock, one of the two writers fails on it, naming the other: never both write.)
    """
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return
        if limit.active_slots >= limit.limit and not runlock.busy(run_dir):
            get_run_logger().warning("%s: concurrency slot held by no live writer (a killed server or flow run); "
                                     "releasing it", name)
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


@contextlib.contextmanager
def _shard_executor(stage: str, config: Config) -> Iterator[Any]:
    """prefect-ray for a sharded stage on `execution.engine=ray` (a task run per shard); else None."""
    if stage not in stages.SHARDED or config.execution.engine != "ray":
        yield None
        return
    from flows import ray_shards

    with ray_shards.executor(config.execution.address) as executor:
        yield executor


@task(name="stage", task_run_name="{stage}")
def stage_task(stage: str, run_dir: str, config: Config, force: bool = False, wait: bool = False,
               lock_owner: str | None = None) -> dict[str, Any]:
    """Run one stage; return its manifest key, counts and whether it was skipped.

    The flow run's page shows a long stage's progress as it goes and every stage's funnel after it.
    """
    name = _run_name(Path(run_dir))
    with contextlib.ExitStack() as stack:
        # Ends at 100 when the stage completes, skipped or not; a failed stage's stays where it stopped.
        progress = stack.enter_context(reporting(artifact_key(name, stage, "progress"),
                                                 f"{stage} of {name}: percent done")) if stage in LONG else None
        executor = stack.enter_context(_shard_executor(stage, config))
        outcome = stages.run(stage, Path(run_dir), config, force=force, wait=wait, flow_run_id=runtime.flow_run.id,
                             inherit_from=lock_owner, executor=executor, progress=progress)
    manifest = outcome.manifest
    publish_funnel(artifact_key(name, stage, "funnel"), stage, Path(run_dir) / stage, manifest)
    logger = get_run_logger()
    if outcome.skipped:
        logger.info("%s: skipped, complete output with key %s in %s", stage, manifest.key[:12],
                    Path(run_dir) / stage)
    else:
        logger.info("%s: done in %.1f s, counts %s", stage, manifest.seconds, manifest.counts)
    return {"stage": stage, "key": manifest.key, "counts": manifest.counts, "skipped": outcome.skipped,
            "seconds": manifest.seconds}


def _publish(stage: str, run_dir: Path) -> None:
    """Markdown artifacts: each data card after `cards`, the eval table after `eval`."""
    name = _run_name(run_dir)
    if stage == "cards":
        from data_cards.render import SETS, inline_markdown

        for which in SETS:
            create_markdown_artifact(inline_markdown(run_dir / "cards" / which), key=artifact_key(name, which, "card"),
                                     description=f"{which.upper()} data card of {name}")
    elif stage == "eval":
        from training import evaluate

        create_markdown_artifact(evaluate.markdown(run_dir), key=artifact_key(name, "eval"),
                                 description=f"held-out accuracy of {name}")


def _stage_flow(stage: str) -> Flow:
    """The Prefect flow of one stage, named after it (deployments are `<stage>/<name>`)."""

    def run_one(run_dir: str, config: Config, force: bool = False, wait: bool = False,
                lock_owner: str | None = None) -> dict[str, Any]:
        with writing(Path(run_dir), f"flow {stage}", wait=wait, lock_owner=lock_owner):
            result = stage_task.with_options(retries=RETRIES.get(stage, 0), retry_delay_seconds=10)(
                stage, run_dir, config, force, wait, lock_owner)
        _publish(stage, Path(run_dir))
        return result

    # Served deployments load flows by module path, so each must be a module attribute by this name.
    run_one.__name__ = run_one.__qualname__ = f"{stage}_flow"
    run_one.__doc__ = STAGE_HELP[stage]
    return flow(run_one, name=stage, description=STAGE_HELP[stage], validate_parameters=True)


pull_flow = _stage_flow("pull")
dedup_flow = _stage_flow("dedup")
generate_flow = _stage_flow("generate")
filter_flow = _stage_flow("filter")
build_flow = _stage_flow("build")
cards_flow = _stage_flow("cards")
sft_flow = _stage_flow("sft")
grpo_flow = _stage_flow("grpo")
eval_flow = _stage_flow("eval")
STAGE_FLOWS: dict[str, Flow] = {stage: globals()[f"{stage}_flow"] for stage in stages.STAGES}


def _hand_off(stage: str, run_dir: str, config: Config) -> dict[str, Any]:
    """Run a training stage through its deployment (a TPU work pool in production) and wait for it.

    The child runs under this flow run's hold of the run folder (`lock_owner`); a child that
    does not complete fails this flow run, naming the child and its state.
    """
    from prefect.exceptions import ObjectNotFound

    deployment = config.orchestration.training_deployment
    name = f"{stage}/{deployment}"
    get_run_logger().info("%s: handing off to deployment %s", stage, name)
    try:
        # Parameters are stored by Prefect and shown in its UI: no URL credentials (the config refuses them anyway).
        parameters = {"run_dir": run_dir, "config": redact.value(config.model_dump(mode="json")),
                      "lock_owner": runtime.flow_run.id}
        run = run_deployment(name, parameters=parameters, timeout=None)
    except ObjectNotFound:
        raise RuntimeError(f"{name}: no such deployment; deploy the training flows first: "
                           f"distillery deploy-training --pool POOL --name {deployment}") from None
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"{name}: flow run {run.name} ended {run.state.name if run.state else 'without a state'}")
    if stage == "eval":  # the table on this flow run too, not only on the child's
        _publish(stage, Path(run_dir))
    return {"stage": stage, "deployment": name, "flow_run": str(run.id), "flow_run_name": run.name}


@flow(name="curate-and-train", description="every stage in order: curation, data cards, SFT, GRPO, evaluation",
      validate_parameters=True)
def curate_and_train(run_dir: str, config: Config, force: bool = False, wait: bool = False) -> list[dict[str, Any]]:
    """Run every stage in order; complete stages are skipped, so a re-run resumes at the first failure.

    The run folder's dataset is held for the whole flow; `wait` waits for another writer instead
    of failing.
    """
    results = []
    with writing(Path(run_dir), "flow curate-and-train", wait=wait, lock_owner=None):
        for stage in stages.STAGES:
            if stage in stages.TRAINING and config.orchestration.training_deployment:
                results.append(_hand_off(stage, run_dir, config))
            else:
                results.append(STAGE_FLOWS[stage](run_dir=run_dir, config=config, force=force))
        if config.publish.repo:  # last, under the hold: nothing rewrites the folder while it is pushed
            results.append(publish_task(run_dir, config))
    return results


@task(name="publish")
def publish_task(run_dir: str, config: Config) -> dict[str, Any]:
    """Push the run's data cards and model to the Hub repos of `publish.*` (`distillery push`)."""
    from flows import push

    report = push.push(Path(run_dir), config.publish.repo, private=config.publish.private,
                       token_block=config.publish.token_block)
    get_run_logger().info("publish: %s", report.splitlines()[-1])
    return {"stage": "publish", "repo": config.publish.repo, "report": report}


def next_version(dataset_dir: Path) -> str:
    """The version after the highest `v<N>` folder of a dataset (v1 for a new one)."""
    numbers = [int(m.group(1)) for p in dataset_dir.glob("v*") if (m := re.fullmatch(r"v(\d+)", p.name))]
    return f"v{max(numbers, default=0) + 1}"


@flow(name="refresh", description="pull sources anew, dedup against every earlier version, curate only new rows",
      validate_parameters=True)
def refresh(dataset_dir: str, config: Config, wait: bool = False) -> dict[str, Any]:
    """Write a new dataset version from fresh pulls, kept only when new rows survive dedup."""
    dataset = Path(dataset_dir)
    # The lock covers the whole dataset folder: every version, the dedup index and refresh.json.
    with writing(dataset / next_version(dataset), "flow refresh", wait=wait, lock_owner=None):
        return _refresh(dataset, config)


def _refresh(dataset: Path, config: Config) -> dict[str, Any]:
    """The refresh itself, under the dataset folder's lock."""
    logger = get_run_logger()
    attempts_file = dataset / "refresh.json"
    attempts = json.loads(attempts_file.read_text()) if attempts_file.is_file() else []
    version = next_version(dataset)
    # A new seed per attempt gives procedural sources new problems; Hub sources re-read their revision.
    seed = config.seed + len(attempts) + 1
    fresh = config.model_copy(update={"seed": seed})
    run_dir = dataset / version
    pull_flow(run_dir=str(run_dir), config=fresh)
    dedup = dedup_flow(run_dir=str(run_dir), config=fresh)
    new_rows = dedup["counts"]["kept"]
    attempt = {"version": version, "seed": seed, "new_rows": new_rows, "kept": new_rows > 0}
    store.write_json([*attempts, attempt], attempts_file)
    if new_rows == 0:
        shutil.rmtree(run_dir)
        logger.info("refresh: no new rows survived dedup against earlier versions; no %s written", version)
        return attempt
    for stage in ("generate", "filter", "build", "cards"):
        STAGE_FLOWS[stage](run_dir=str(run_dir), config=fresh)
    logger.info("refresh: %s written with %d new problems", run_dir, new_rows)
    return attempt
