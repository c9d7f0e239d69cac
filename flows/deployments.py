"""The deployments `distillery serve` offers: `curate-and-train/<name>`, one per stage, and `refresh`.

Locally every deployment is served by one process (`prefect.serve`), so flow runs execute
on this machine. In production the training stages go to a TPU work pool instead
(docs/production.md): `distillery deploy-training --pool tpu` deploys `sft`, `grpo` and
`eval` there as `<stage>/tpu` (`deploy_training`), and with
`orchestration.training_deployment: tpu` `curate-and-train` hands each training stage to
its deployment with `run_deployment` and waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import stages
from machinery import redact
from machinery.config import load_config

DEFAULT_DEPLOYMENT = "cpu-smoke"
DEFAULT_DATASET = Path("runs/demo")
TRAINING_DEPLOYMENT = "tpu"  # the deployment name `orchestration.training_deployment` names
SOURCE = Path(__file__).resolve().parents[1]  # this checkout: flows/pipeline.py is found from here


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One deployment: which flow, its name, its profile and run folder, and its schedule."""

    flow: str
    name: str
    profile: str
    path: Path  # run folder (a dataset folder for refresh), relative to where `serve` starts
    cron: str | None = None
    paused: bool = False
    description: str = ""
    sets: tuple[str, ...] = field(default_factory=tuple)

    @property
    def full_name(self) -> str:
        """`flow/deployment`, as `prefect deployment run` takes it."""
        return f"{self.flow}/{self.name}"


def specs() -> list[Spec]:
    """Every deployment, in the order `distillery deployments` prints them."""
    smoke = load_config(DEFAULT_DEPLOYMENT).orchestration
    nightly = load_config("kaggle-tpu").orchestration
    demo = DEFAULT_DATASET / "v1"
    found = [
        Spec(flow="curate-and-train", name="cpu-smoke", profile="cpu-smoke", path=demo,
             description="the embedded default end to end on CPU"),
        Spec(flow="curate-and-train", name="tiny", profile="tiny", path=Path("runs/tiny/v1"),
             description="a seconds-long run on a tiny random model: checks the wiring, not the results"),
        Spec(flow="curate-and-train", name="nightly", profile="kaggle-tpu", path=Path("runs/nightly/v1"),
             cron=nightly.nightly_cron, paused=True,
             description="Hub sources and a served teacher, nightly (paused until resumed: it needs the endpoint)"),
        Spec(flow="curate-and-train", name="tpu", profile="tpu-pod", path=Path("runs/tpu/v1"),
             description="production profile: Hub sources, served teacher, TPU mesh"),
    ]
    found += [Spec(flow=stage, name=DEFAULT_DEPLOYMENT, profile=DEFAULT_DEPLOYMENT, path=demo,
                   description=f"the {stage} stage alone on an existing run folder")
              for stage in stages.STAGES]
    found.append(Spec(flow="refresh", name="weekly", profile=DEFAULT_DEPLOYMENT, path=DEFAULT_DATASET,
                      cron=smoke.refresh_cron,
                      description="pull anew, dedup against earlier versions, write a version only with new rows"))
    return found


def parameters(spec: Spec, root: Path) -> dict[str, Any]:
    """The flow parameters of a deployment: absolute paths under `root` and the resolved config, URLs redacted."""
    config = redact.value(load_config(spec.profile, sets=spec.sets).model_dump(mode="json"))
    where = str((root / spec.path).resolve())
    return {"dataset_dir": where, "config": config} if spec.flow == "refresh" else {"run_dir": where, "config": config}


def create_concurrency_limits(root: Path | None = None) -> list[str]:
    """One Prefect global concurrency limit of 1 per dataset folder the deployments write; their names.

    Flows hold a slot for their whole run (`flows.pipeline.writing`), so a second run on the
    same folder, `refresh/weekly` during `curate-and-train/cpu-smoke` say, waits in Prefect.
    """
    from prefect import get_client

    from flows import pipeline

    root = root or Path.cwd()
    names = sorted({pipeline.limit_name(root / (s.path / "v1" if s.flow == "refresh" else s.path)) for s in specs()})
    with get_client(sync_client=True) as client:
        for name in names:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return names


def runner_deployments(root: Path | None = None) -> list[Any]:
    """Prefect RunnerDeployments for every spec, ready for `prefect.serve`."""
    from prefect.deployments.runner import EntrypointType

    from flows import pipeline

    flows = {"curate-and-train": pipeline.curate_and_train, "refresh": pipeline.refresh, **pipeline.STAGE_FLOWS}
    root = root or Path.cwd()
    return [flows[s.flow].to_deployment(name=s.name, parameters=parameters(s, root), cron=s.cron,
                                        paused=s.paused or None, description=s.description, tags=[s.profile],
                                        entrypoint_type=EntrypointType.MODULE_PATH)
            for s in specs()]


def deploy_training(pool: str, *, name: str = TRAINING_DEPLOYMENT, source: Path = SOURCE) -> list[str]:
    """Deploy the sft, grpo and eval flows to a work pool (the TPU pool); their `flow/deployment` names.

    The flows load from `source`, a checkout of this repository at the same path on the
    pool's workers (shared storage, or the same image). No parameters are fixed:
    `curate-and-train` passes the run folder and the whole config with each run.
    """
    from prefect import Flow

    names = []
    for stage in stages.TRAINING:
        remote = Flow.from_source(source=str(source), entrypoint=f"flows/pipeline.py:{stage}_flow")
        remote.deploy(name=name, work_pool_name=pool, build=False, push=False, print_next_steps=False,
                      ignore_warnings=True,
                      description=f"the {stage} stage on the {pool} pool, handed off by curate-and-train",
                      tags=["training", pool])
        names.append(f"{stage}/{name}")
    return names
