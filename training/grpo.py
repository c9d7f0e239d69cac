"""The GRPO stage: Tunix's GRPOLearner on the GRPO prompt set, starting from the SFT adapter.

Actor = student + the SFT adapter (trained further), reference = the student without LoRA.
Prompts longer than `grpo.max_prompt_length` tokens are rejected and counted (Tunix would
not truncate them). Writes `grpo/adapter.safetensors`, `grpo/metrics.parquet` (mean reward,
completion tokens and time per step) and the merged model, `grpo/model/` (HF safetensors).
A killed run resumes from `grpo/checkpoints/` like SFT.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation import store
from curation.config import Config
from models import registry
from models.decode import cut_at_stop
from training import evaluate, export, lora, mesh, rewards, sft

logger = logging.getLogger(__name__)

STAGE = "grpo"
MODEL_DIR = export.MODEL_DIR
MODEL_FILES = tuple(f"{MODEL_DIR}/{name}" for name in ("model.safetensors", "config.json", "tokenizer.model"))


class Reject(enum.StrEnum):
    """Why a GRPO prompt was not trained on."""

    PROMPT_TOO_LONG = "prompt_too_long"


@dataclass(kw_only=True)
class GrpoStats(store.StageStats):
    """What the GRPO run did: steps, where it resumed, rewards and speed."""

    steps: int = 0
    resumed_from: int = 0
    mean_reward: list[float] = field(default_factory=list)  # per step, in step order
    completion_tokens: int = 0
    tokens_per_s: float = 0.0


def prompt_lengths(frame: pl.DataFrame, tokenizer: Any) -> pl.DataFrame:
    """The frame with `prompt_tokens`: BOS + the prompt, as the rollout encodes it."""
    return frame.with_columns(prompt_tokens=pl.Series([1 + len(tokenizer.encode(p)) for p in frame["prompt"]],
                                                      dtype=pl.Int32))


def split_too_long(frame: pl.DataFrame, max_prompt_length: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected with reason): prompts over the limit are never silently truncated."""
    too_long = pl.col("prompt_tokens") > max_prompt_length
    rejected = frame.filter(too_long).with_columns(
        reject_reason=pl.lit(Reject.PROMPT_TOO_LONG.value),
        reject_detail=pl.format("{} tokens > grpo.max_prompt_length {}", pl.col("prompt_tokens"),
                                pl.lit(max_prompt_length)))
    return frame.filter(~too_long), rejected


def batches(frame: pl.DataFrame, *, steps: int, batch_size: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Exactly `steps` batches of NumPy arrays (Tunix needs arrays), epochs reshuffled by seed."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(frame.height).tolist())
    columns = {"prompts": frame["prompt"].to_numpy(), "gold": frame["gold"].cast(pl.String).to_numpy(),
               "source": frame["source"].to_numpy()}
    if "meta" in frame.columns:  # procedural problems: the generator's entry, for its own verdict
        columns["meta"] = frame["meta"].to_numpy()
    return [{name: values[order[s * batch_size : (s + 1) * batch_size]] for name, values in columns.items()}
            for s in range(steps)]


class _StepRecorder:
    """Collects each step's rewards and completion tokens; writes the row when the update lands."""

    def __init__(self, log: sft.MetricsLog, tokenizer: Any):
        self.log, self.tokenizer = log, tokenizer
        self.rewards: list[float] = []
        self.tokens = 0

    def wrap(self, fns: list) -> list:
        """The reward functions as one Tunix reward that also records the batch's rewards and tokens."""

        def summed(prompts, completions, **kwargs):
            self.tokens += sum(len(self.tokenizer.encode(c)) for c in completions)
            # Tunix's rollout stops on token ids only; the teacher and eval decoders also stop at
            # the string `</answer>`, so the rewards judge the completion as they would have ended it.
            completions = [cut_at_stop(c, (evaluate.ANSWER_END,)) for c in completions]
            totals = np.zeros(len(completions))
            for fn in fns:
                values = fn(prompts, completions, **kwargs)
                totals += np.array([0.0 if v is None else v for v in values], dtype=float)
            self.rewards.extend(totals.tolist())
            return totals.tolist()

        return [summed]

    def step_done(self, step: int) -> None:
        """Write the row for a finished update and start the next step's collection."""
        mean = float(np.mean(self.rewards)) if self.rewards else None
        self.log.train_step(step, None, {"mean_reward": mean}, tokens=self.tokens)
        self.rewards, self.tokens = [], 0


def rollout_engine(config: Config) -> Any:
    """What `ClusterConfig.rollout_engine` gets for grpo.rollout_engine; one line when its package is absent."""
    import importlib.util

    engine = config.grpo.rollout_engine
    if engine == "distillery":
        from training import rollout

        return rollout.engine(lora_scale=config.sft.lora.alpha / config.sft.lora.rank)
    package = {"vllm": "vllm", "sglang_jax": "sgl_jax"}.get(engine)
    if package and importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(f"grpo.rollout_engine={engine} needs the {package!r} package, which runs on a TPU "
                                  f"host; it is not installed here (use distillery or vanilla)")
    return engine


def _cluster(actor: Any, reference: Any, tokenizer: Any, config: Config, folder: Path):
    """An RLCluster: every role on one mesh, the configured rollout engine, checkpoints every grpo.checkpoint_every."""
    import optax
    from tunix.rl import rl_cluster as rlc
    from tunix.rl.rollout import base_rollout

    grpo = config.grpo
    device_mesh = mesh.create(config.mesh) or mesh.single_device()  # RLCluster needs a mesh object
    training = rlc.RLTrainingConfig(
        actor_optimizer=optax.adamw(grpo.learning_rate), eval_every_n_steps=max(grpo.steps, 1),
        max_steps=grpo.steps, checkpoint_root_directory=str(folder),
        checkpointing_options=sft.checkpoint_options(grpo.checkpoint_every), pbar_description="GRPO")
    cache = -(-(grpo.max_prompt_length + grpo.max_new_tokens) // 64) * 64
    # Stop at the end of the student's turn too: text after it would fail the format reward.
    rollout = base_rollout.RolloutConfig(max_tokens_to_generate=grpo.max_new_tokens,
                                         max_prompt_length=grpo.max_prompt_length, temperature=grpo.temperature,
                                         top_p=1.0, top_k=grpo.top_k, kv_cache_size=cache, seed=None,
                                         eos_tokens=list(evaluate.stop_ids(tokenizer, config.student.model)))
    roles = {rlc.Role.ACTOR: device_mesh, rlc.Role.REFERENCE: device_mesh, rlc.Role.ROLLOUT: device_mesh}
    cluster_config = rlc.ClusterConfig(role_to_mesh=roles, rollout_engine=rollout_engine(config),
                                       offload_to_cpu=False, training_config=training, rollout_config=rollout)
    return rlc.RLCluster(actor=actor, reference=reference, tokenizer=tokenizer, cluster_config=cluster_config)


def train(loaded: registry.LoadedModel, actor: Any, kept: pl.DataFrame, stage_dir: Path, config: Config, *,
          key: str, force: bool, reward_fns: list[rewards.RewardFn]) -> tuple[Any, GrpoStats]:
    """GRPO on the kept prompts; returns (trained LoRA actor, stats without row counts)."""
    from tunix.rl.grpo import grpo_learner

    grpo = config.grpo
    stats = GrpoStats(rows_in=0, kept=0, rejected=0)
    if kept.is_empty() or grpo.steps == 0:
        logger.warning("grpo: %s; the adapter stays the SFT one",
                       "no training prompts" if kept.is_empty() else "grpo.steps is 0")
        return actor, stats
    folder = stage_dir / sft.CHECKPOINTS
    sft.guard_checkpoints(folder, key, force=force)
    log = sft.MetricsLog(stage_dir / sft.METRICS_LOG, [])
    recorder = _StepRecorder(log, loaded.tokenizer)
    cluster = _cluster(actor, loaded.model, loaded.tokenizer, config, folder)
    trainer = cluster.actor_trainer
    algo = grpo_learner.GRPOConfig(num_generations=grpo.num_generations, beta=grpo.beta, epsilon=grpo.epsilon)
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=recorder.wrap(reward_fns))
    stats.resumed_from = trainer.train_steps
    log.resume_at(trainer.train_steps)
    if trainer.train_steps:
        logger.info("grpo: resuming from the checkpoint at step %d of %d", trainer.train_steps, grpo.steps)
    original = trainer._post_process_train_step

    def post_process(aux):  # Tunix's per-update hook; the update is done when it runs
        original(aux)
        recorder.step_done(trainer.train_steps + 1)

    trainer._post_process_train_step = post_process
    started = time.perf_counter()
    try:
        learner.train(batches(kept, steps=grpo.steps, batch_size=grpo.batch_size, seed=config.seed))
    finally:
        trainer.checkpoint_manager.close()  # waits for an in-flight async save
    seconds = time.perf_counter() - started
    table = log.table()
    stats.steps = trainer.train_steps
    stats.mean_reward = [float(v) if v is not None else float("nan") for v in table["mean_reward"].to_list()]
    stats.completion_tokens = int(table["tokens"].sum())
    new_tokens = int(table.filter(pl.col("step") > stats.resumed_from)["tokens"].sum())
    stats.tokens_per_s = round(new_tokens / seconds, 2) if seconds else 0.0
    return trainer.model, stats


def compute(run_dir: Path, config: Config, *, key: str, force: bool, reward_fns: list[rewards.RewardFn]
            ) -> store.StageResult:
    """Reject long prompts, run GRPO from the SFT adapter, write the adapter and the merged model."""
    started = time.time()
    frame = store.finished(run_dir, "build").read().filter(pl.col("split") == "train")
    loaded = registry.load(config.student.model, seed=config.seed)
    kept, rejected = split_too_long(prompt_lengths(frame, loaded.tokenizer), config.grpo.max_prompt_length)
    stage_dir = run_dir / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    actor = lora.load_into(loaded.model, run_dir / sft.STAGE / lora.ADAPTER, config=config.sft.lora,
                           seed=config.seed)
    actor, stats = train(loaded, actor, kept, stage_dir, config, key=key, force=force, reward_fns=reward_fns)
    lora.save(actor, stage_dir / lora.ADAPTER, config=config.sft.lora, base=config.student.model)
    export.merged(loaded, actor, stage_dir / MODEL_DIR, lora=config.sft.lora)
    stats.rows_in, stats.kept, stats.rejected = frame.height, kept.height, rejected.height
    stats.reasons = store.reason_counts(rejected)
    stats.seconds = round(time.time() - started, 3)
    metrics = sft.MetricsLog(stage_dir / sft.METRICS_LOG, []).table().drop("loss") if stats.steps else pl.DataFrame(
        schema={"step": pl.Int64, "mean_reward": pl.Float64})
    return store.StageResult(kept=kept.select("problem_id", "prompt_tokens"), rejected=rejected, stats=stats,
                             extra={"metrics": metrics})


def run(run_dir: Path, config: Config, *, force: bool = False,
        reward_fns: list[rewards.RewardFn] | None = None) -> store.Manifest:
    """Run the GRPO stage on `run_dir/build` from the SFT adapter, unless complete with the same key.

    `reward_fns` (Tunix's signature, summed) default to `training.rewards.reward_fns()`:
    format, partial format and the curation verdict.
    """
    fns = rewards.reward_fns() if reward_fns is None else reward_fns
    inputs = {"build": store.finished(run_dir, "build").hash(),
              "sft_adapter": store.finished(run_dir, sft.STAGE).hash(lora.ADAPTER), "student": config.student.model}
    stage_config = {"grpo": config.grpo.model_dump(mode="json"), "lora": config.sft.lora.model_dump(mode="json"),
                    "seed": config.seed, "mesh": config.mesh.model_dump(mode="json")}
    key = store.stage_key(stage_config, inputs)
    return store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, force=force,
                           compute=lambda: compute(run_dir, config, key=key, force=force, reward_fns=fns),
                           outputs=(lora.ADAPTER, *MODEL_FILES))
