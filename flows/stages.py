"""Every stage behind one call, `run(stage, run_dir, config)`: what the CLI and the Prefect flows share.

Stage logic lives in curation/, training/ and data_cards/; this module only maps a stage
name to its entry point and tells whether the call recomputed or found a complete output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machinery import redact, runlock, store
from machinery.config import Config
from machinery.execution import Executor

Progress = Callable[[float], None]  # how far a stage is, 0 to 1; the flows publish it as a progress artifact

STAGES = ("pull", "dedup", "generate", "filter", "build", "cards", "sft", "grpo", "eval")
CURATION = STAGES[:6]
SHARDED = STAGES[:4]  # their per-row work runs where `execution.*` says
TRAINING = STAGES[6:]
CONFIG_FILE = "config.yaml"
STAGE_HELP = {
    "pull": "load the configured sources into the problem table",
    "generate": "have the teacher write reasoning traces for every problem",
    "filter": "keep traces with the right format and the verified answer",
    "dedup": "remove exact and near-duplicates and benchmark contamination",
    "build": "build the SFT set and the GRPO prompt set",
    "cards": "render the data cards of the built sets",
    "sft": "LoRA supervised warmup of the student",
    "grpo": "GRPO reinforcement learning of the student",
    "eval": "held-out accuracy before SFT, after SFT and after GRPO",
}


def _execution(config: Config, executor: Executor | None, progress: Progress | None = None) -> dict[str, Any]:
    """Where a curation stage's per-row work runs (`execution.*`, or the caller's executor): never in its key.

    With `progress`, the executor reports the fraction of row shards done as each finishes.
    """
    from flows.progress import CountingExecutor
    from machinery.execution import make_executor

    executor = executor or make_executor(config.execution)
    return {"executor": CountingExecutor(executor, progress) if progress is not None else executor,
            "shard_rows": config.execution.shard_rows}


def _pull(run_dir: Path, config: Config, force: bool, executor: Executor | None = None,
          progress: Progress | None = None) -> store.Manifest:
    from curation import pull

    return pull.run(run_dir, config.pull_stage(), force=force, **_execution(config, executor))


def _dedup(run_dir: Path, config: Config, force: bool, executor: Executor | None = None,
           progress: Progress | None = None) -> store.Manifest:
    from curation import dedup

    return dedup.run(run_dir, config.dedup_stage(), force=force, **_execution(config, executor))


def _generate(run_dir: Path, config: Config, force: bool, executor: Executor | None = None,
              progress: Progress | None = None) -> store.Manifest:
    from curation import generate
    from flows.secrets import teacher_api_key
    from machinery.execution import make_executor

    executor = executor or make_executor(config.execution)
    # Here the stage counts samples as they land; Ray tasks' samples are out of sight, so count their shards.
    execution = _execution(config, executor, progress if not executor.in_process else None)
    return generate.run(run_dir, config.teacher, seed=config.seed, force=force, api_key=teacher_api_key(config.teacher),
                        progress=progress if executor.in_process else None, **execution)


def _filter(run_dir: Path, config: Config, force: bool, executor: Executor | None = None,
            progress: Progress | None = None) -> store.Manifest:
    from curation import filters
    from flows.secrets import judge_api_key

    return filters.run(run_dir, config.filter_stage(), force=force, judge_api_key=judge_api_key(config.filter.judge),
                       **_execution(config, executor, progress))


def _build(run_dir: Path, config: Config, force: bool, progress: Progress | None = None) -> store.Manifest:
    from curation import build

    return build.run(run_dir, config.build, student=config.student.model, seed=config.seed,
                     revision=config.student.revision, force=force)


def _cards(run_dir: Path, config: Config, force: bool, progress: Progress | None = None) -> store.Manifest:
    from data_cards import cards

    return cards.run(run_dir, seed=config.seed, force=force)


def _sft(run_dir: Path, config: Config, force: bool, progress: Progress | None = None) -> store.Manifest:
    from training import sft

    return sft.run(run_dir, config, force=force, progress=progress)


def _grpo(run_dir: Path, config: Config, force: bool, progress: Progress | None = None) -> store.Manifest:
    from training import grpo

    return grpo.run(run_dir, config, force=force, progress=progress)


def _eval(run_dir: Path, config: Config, force: bool, progress: Progress | None = None) -> store.Manifest:
    from training import evaluate

    return evaluate.run(run_dir, config, force=force, progress=progress)


RUNNERS: dict[str, Callable[..., store.Manifest]] = {
    "pull": _pull, "dedup": _dedup, "generate": _generate, "filter": _filter, "build": _build, "cards": _cards,
    "sft": _sft, "grpo": _grpo, "eval": _eval}


def write_config(run_dir: Path, config: Config) -> None:
    """Record the resolved config as run_dir/config.yaml: it reproduces the run and feeds the cards."""
    import yaml

    text = yaml.safe_dump(redact.value(config.model_dump(mode="json")), sort_keys=False)
    path = run_dir / CONFIG_FILE
    if not path.is_file() or path.read_text() != text:
        store.atomic_write_bytes(path, text.encode())


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What one stage call did: its manifest, and whether a complete output was reused."""

    stage: str
    manifest: store.Manifest
    skipped: bool


def _secondary_host(stage: str, config: Config) -> bool:
    """A training stage on a pod host other than process 0: it runs under process 0's hold of the folder.

    On a pod every host runs the stage (one SPMD program); only process 0 takes the run lock.
    """
    if stage not in TRAINING or not config.mesh.multihost:
        return False
    from training import mesh

    mesh.start(config.mesh)  # joins the pod: process indices are known from here on
    return not mesh.is_primary()


def run(stage: str, run_dir: Path, config: Config, *, force: bool = False, wait: bool = False,
        flow_run_id: str | None = None, inherit_from: str | None = None, executor: Executor | None = None,
        progress: Progress | None = None) -> Outcome:
    """Run one stage on `run_dir` under the dataset folder's lock; skipped when its output is complete.

    `wait`: wait for another writer of the folder instead of failing; `flow_run_id` names the
    Prefect flow run in the lock; `inherit_from` lets a stage handed off by that flow run run
    under its lock (see `machinery.runlock.hold`). `executor` runs a sharded stage's work
    instead of the one `execution.*` configures (the flows: prefect-ray). `progress` is called
    with the fraction done as a long stage (generate, filter, sft, grpo, eval) goes; others ignore it.
    """
    hold = (contextlib.nullcontext() if _secondary_host(stage, config) else
            runlock.hold(run_dir, f"stage {stage}", flow_run_id=flow_run_id, wait=wait, inherit_from=inherit_from))
    with hold:
        write_config(run_dir, config)
        before = store.Manifest.read(run_dir / stage / store.MANIFEST)
        runner = RUNNERS[stage]
        # Positional: tests wrap a runner as `lambda *args: ...`.
        manifest = (runner(run_dir, config, force, executor, progress) if stage in SHARDED
                    else runner(run_dir, config, force, progress))
    # A stage that recomputes writes a new manifest; the same one back means nothing ran.
    return Outcome(stage=stage, manifest=manifest, skipped=before == manifest)
