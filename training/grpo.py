"""The GRPO stage: Tunix's GRPOLearner on the GRPO prompt set, starting from the SFT policy.

The SFT adapter is folded into the student's weights; GRPO trains a fresh LoRA on that, and
the reference is that same folded model: the KL term keeps the policy near the SFT warmup
(not the base model), and actor and reference share one copy of the weights (Tunix checks
it: no "do not share the same backbone" warning). Everything is read onto the one device
mesh that RLCluster runs on, so nothing is re-placed. Prompts longer than
`grpo.max_prompt_length` tokens are rejected and counted (Tunix would not truncate them).
Writes `grpo/adapter.safetensors` (the GRPO LoRA alone), `grpo/metrics.parquet` (mean
reward, KL, completion tokens and time per step) and `grpo/model/`: base + SFT + GRPO
folded, a Hugging Face folder. A killed run resumes from `grpo/checkpoints/` like SFT.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from machinery import store
from machinery.config import Config
from models import registry
from models.decode import cut_at_stop, round_up
from models.tokenizer import bos_prefix
from training import evaluate, export, lora, mesh, rewards, sft

logger = logging.getLogger(__name__)

STAGE = "grpo"
MODEL_DIR = export.MODEL_DIR
MODEL_FILES = sft.MODEL_FILES


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
    prompt_width: int = 0  # tokens every prompt is left-padded to in rollouts and updates


def prompt_lengths(frame: pl.DataFrame, tokenizer: Any) -> pl.DataFrame:
    """The frame with `prompt_tokens`: BOS (when the model has one) + the prompt, as the rollout encodes it."""
    start = len(bos_prefix(tokenizer))
    return frame.with_columns(prompt_tokens=pl.Series([start + len(tokenizer.encode(p)) for p in frame["prompt"]],
                                                      dtype=pl.Int32))


def split_too_long(frame: pl.DataFrame, max_prompt_length: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected with reason): prompts over the limit are never silently truncated."""
    too_long = pl.col("prompt_tokens") > max_prompt_length
    rejected = frame.filter(too_long).with_columns(
        reject_reason=pl.lit(Reject.PROMPT_TOO_LONG.value),
        reject_detail=pl.format("{} tokens > grpo.max_prompt_length {}", pl.col("prompt_tokens"),
                                pl.lit(max_prompt_length)))
    return frame.filter(~too_long), rejected


def prompt_width(prompt_tokens: pl.Series, max_prompt_length: int, multiple: int = 32) -> int:
    """The padded prompt width of rollouts and updates: the longest prompt rounded up, at most max_prompt_length.

    Tunix pads every prompt to `RolloutConfig.max_prompt_length` and the update runs the model
    over that width plus max_new_tokens; sized to the data (61-73 token prompts in the
    embedded run) rather than the limit (256), its GRPO steps took 25 s instead of 36 s.
    """
    longest = int(prompt_tokens.max() or 1)
    return min(max_prompt_length, round_up(longest, multiple))


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

    def step_done(self, step: int, kl: float | None = None) -> None:
        """Write the row for a finished update (with the KL to the reference it was computed at); start the next."""
        mean = float(np.mean(self.rewards)) if self.rewards else None
        self.log.train_step(step, None, {"mean_reward": mean, "kl": kl}, tokens=self.tokens)
        self.rewards, self.tokens = [], 0


def rollout_engine(config: Config, family: str = "gemma3") -> Any:
    """What `ClusterConfig.rollout_engine` gets for grpo.rollout_engine; one line when its package is absent.

    The distillery engine runs Gemma 3 only: other families roll out with Tunix's vanilla one (logged).
    """
    import importlib.util

    engine = config.grpo.rollout_engine
    if engine == "distillery" and family != "gemma3":
        logger.info("grpo.rollout_engine=distillery runs Gemma 3 only; %s is %s: rolling out with vanilla "
                    "(Tunix's Sampler)", config.student.model, family)
        engine = "vanilla"
    if engine == "distillery":
        from training import rollout

        return rollout.engine(lora_scale=config.sft.lora.alpha / config.sft.lora.rank)
    package = {"vllm": "vllm", "sglang_jax": "sgl_jax"}.get(engine)
    if package and importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(f"grpo.rollout_engine={engine} needs the {package!r} package, which runs on a TPU "
                                  f"host; it is not installed here (use distillery or vanilla)")
    return engine


def _cluster(actor: Any, reference: Any, loaded: registry.LoadedModel, config: Config, folder: Path,
             device_mesh: Any, width: int):
    """An RLCluster: every role on the mesh the models were read onto, prompts padded to `width` tokens,
    checkpoints every grpo.checkpoint_every."""
    import optax
    from tunix.rl import rl_cluster as rlc
    from tunix.rl.rollout import base_rollout

    grpo = config.grpo
    training = rlc.RLTrainingConfig(
        actor_optimizer=optax.adamw(grpo.learning_rate), eval_every_n_steps=max(grpo.steps, 1),
        max_steps=grpo.steps, checkpoint_root_directory=str(folder),
        checkpointing_options=sft.checkpoint_options(grpo.checkpoint_every), pbar_description="GRPO")
    cache = -(-(width + grpo.max_new_tokens) // 64) * 64
    # Stop at the end of the student's turn too: text after it would fail the format reward.
    rollout = base_rollout.RolloutConfig(max_tokens_to_generate=grpo.max_new_tokens,
                                         max_prompt_length=width, temperature=grpo.temperature,
                                         top_p=1.0, top_k=grpo.top_k, kv_cache_size=cache, seed=None,
                                         eos_tokens=list(loaded.stop_ids or (loaded.tokenizer.eos_id(),)))
    roles = {rlc.Role.ACTOR: device_mesh, rlc.Role.REFERENCE: device_mesh, rlc.Role.ROLLOUT: device_mesh}
    cluster_config = rlc.ClusterConfig(role_to_mesh=roles, rollout_engine=rollout_engine(config, loaded.family),
                                       offload_to_cpu=False, training_config=training, rollout_config=rollout)
    return rlc.RLCluster(actor=actor, reference=reference, tokenizer=loaded.tokenizer, cluster_config=cluster_config)


def policies(loaded: registry.LoadedModel, sft_adapter: Path, config: Config) -> tuple[Any, Any]:
    """(actor, reference): a fresh LoRA on the student with the SFT adapter folded in, and that folded student.

    The actor is a qwix clone of the reference: the same weight arrays (one copy), LoRA B = 0,
    so at step 0 both give the SFT policy's logits and the KL term is zero.
    """
    reference = lora.folded(loaded.model, sft_adapter, config.sft.lora, seed=config.seed)
    return lora.apply(reference, config.sft.lora, seed=config.seed), reference


def share_backbone(actor: Any, reference: Any) -> None:
    """Point the actor's frozen weights back at the reference's arrays: one copy of the backbone again.

    Tunix checks the sharing once, when RLCluster starts; but a jitted train step hands back
    every weight it was given as a new buffer (jax 0.10 forwards none; measured: after two
    steps none of the 26 frozen weights of the tiny model shared a buffer), so the actor would
    hold a second copy of the frozen weights from the first update on. They are equal (only
    LoRA is updated), so the actor takes the reference's arrays again and the copies are freed.
    """
    from flax import nnx

    nnx.update(actor, nnx.state(reference, nnx.Param))


def train(loaded: registry.LoadedModel, actor: Any, reference: Any, kept: pl.DataFrame, stage_dir: Path,
          config: Config, *, key: str, force: bool, reward_fns: list[rewards.RewardFn],
          device_mesh: Any = None, progress: Callable[[float], None] | None = None) -> tuple[Any, GrpoStats]:
    """GRPO on the kept prompts; returns (trained LoRA actor, stats without row counts).

    `kept` carries `prompt_tokens` (`prompt_lengths`): rollouts and updates pad to the longest.
    `device_mesh` is the mesh actor and reference were read onto (default: `mesh.create(config.mesh)`).
    `progress` gets the fraction of steps done after each update.
    """
    from tunix.rl.grpo import grpo_learner

    grpo = config.grpo
    stats = GrpoStats(rows_in=0, kept=0, rejected=0)
    if kept.is_empty() or grpo.steps == 0:
        logger.warning("grpo: %s; the GRPO adapter stays the identity (LoRA B = 0): the SFT policy",
                       "no training prompts" if kept.is_empty() else "grpo.steps is 0")
        return actor, stats
    folder = stage_dir / sft.CHECKPOINTS
    sft.guard_checkpoints(folder, key, force=force)
    log = sft.MetricsLog(stage_dir / sft.METRICS_LOG, [], progress=progress, total_steps=grpo.steps)
    recorder = _StepRecorder(log, loaded.tokenizer)
    device_mesh = device_mesh if device_mesh is not None else mesh.create(config.mesh)
    stats.prompt_width = prompt_width(kept["prompt_tokens"], grpo.max_prompt_length)
    cluster = _cluster(actor, reference, loaded, config, folder, device_mesh, stats.prompt_width)
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
        share_backbone(trainer.model, reference)
        kl = aux.get("kl") if isinstance(aux, dict) else None
        recorder.step_done(trainer.train_steps + 1, float(kl) if kl is not None else None)

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


def compute(run_dir: Path, config: Config, *, key: str, force: bool, reward_fns: list[rewards.RewardFn],
            progress: Callable[[float], None] | None = None) -> store.StageResult:
    """Reject long prompts, run GRPO from the SFT policy, write the GRPO adapter and the merged model."""
    started = time.time()
    frame = store.finished(run_dir, "build").read().filter(pl.col("split") == "train")
    device_mesh = mesh.create(config.mesh)
    loaded = sft.load_student(config, device_mesh)
    kept, rejected = split_too_long(prompt_lengths(frame, loaded.tokenizer), config.grpo.max_prompt_length)
    stage_dir = run_dir / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    actor, reference = policies(loaded, run_dir / sft.STAGE / lora.ADAPTER, config)
    loaded = dataclasses.replace(loaded, model=None)  # the folded reference is now the only copy of the weights
    actor, stats = train(loaded, actor, reference, kept, stage_dir, config, key=key, force=force,
                         reward_fns=reward_fns, device_mesh=device_mesh, progress=progress)
    lora.save(actor, stage_dir / lora.ADAPTER, config=config.sft.lora, base=f"{loaded.source} + sft adapter")
    export.write(loaded, lora.fold(reference, actor, config.sft.lora), stage_dir / MODEL_DIR,
                 dtype=config.student.dtype)
    stats.rows_in, stats.kept, stats.rejected = frame.height, kept.height, rejected.height
    stats.reasons = store.reason_counts(rejected)
    stats.seconds = round(time.time() - started, 3)
    metrics = sft.MetricsLog(stage_dir / sft.METRICS_LOG, []).table().drop("loss") if stats.steps else pl.DataFrame(
        schema={"step": pl.Int64, "mean_reward": pl.Float64})
    return store.StageResult(kept=kept.select("problem_id", "prompt_tokens"), rejected=rejected, stats=stats,
                             extra={"metrics": metrics})


def run(run_dir: Path, config: Config, *, force: bool = False,
        reward_fns: list[rewards.RewardFn] | None = None, progress: Callable[[float], None] | None = None
        ) -> store.Manifest:
    """Run the GRPO stage on `run_dir/build` from the SFT policy, unless complete with the same key.

    `reward_fns` (Tunix's signature, summed) default to `training.rewards.reward_fns(config.filter)`:
    format, partial format and the curation verdict. `progress` gets the fraction of steps done.
    """
    fns = rewards.reward_fns(config.filter_stage()) if reward_fns is None else reward_fns
    inputs = {"build": store.finished(run_dir, "build").hash(),
              "sft_adapter": store.finished(run_dir, sft.STAGE).hash(lora.ADAPTER), "student": sft.student_identity(config)}
    stage_config = {"grpo": config.grpo.model_dump(mode="json"), "lora": config.sft.lora.model_dump(mode="json"),
                    "seed": config.seed, "dtype": config.student.dtype, "mesh": config.mesh.model_dump(mode="json"),
                    "reward": rewards.settings(config.filter_stage())}
    key = store.stage_key(stage_config, inputs)
    return store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, force=force,
                           compute=lambda: compute(run_dir, config, key=key, force=force, reward_fns=fns,
                                                   progress=progress),
                           outputs=(lora.ADAPTER, *MODEL_FILES))
