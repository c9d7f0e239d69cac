"""The SFT stage: a LoRA warmup of the student on the SFT set with Tunix's PeftTrainer.

Reads `build/sft.parquet` (train split to train, validation split for eval loss), writes
`sft/adapter.safetensors` (the LoRA matrices only), `sft/model/` (the student with the
adapter folded in, a Hugging Face folder), `sft/metrics.parquet` (one row per step) and
`sft/data.parquet` / `sft/rejected.parquet` (rows too long for `sft.max_length`, counted).
The student is read straight onto the device mesh (`mesh.fsdp` x `mesh.tp`).
A killed run resumes from its last checkpoint under `sft/checkpoints/`; `metrics.jsonl` is
appended live, so the history of a killed run survives and continues without gaps.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from machinery import formats, store
from machinery.config import Config
from models import registry
from models.decode import round_up
from models.tokenizer import bos_prefix
from training import export, lora, mesh

logger = logging.getLogger(__name__)

STAGE = "sft"
MODEL_FILES = tuple(f"{export.MODEL_DIR}/{name}" for name in export.FILES)
CHECKPOINTS = "checkpoints"
KEY_FILE = "stage_key"
METRICS_LOG = "metrics.jsonl"
BUCKET = 32  # sequence lengths round up to this: one compiled shape for the whole run


class Reject(enum.StrEnum):
    """Why an SFT row was not trained on."""

    TOO_LONG = "too_long"


@dataclass(kw_only=True)
class SftStats(store.StageStats):
    """What the SFT run did: steps, where it resumed, losses and speed."""

    steps: int = 0
    resumed_from: int = 0
    train_rows: int = 0
    validation_rows: int = 0
    seq_length: int = 0
    train_tokens: int = 0
    final_loss: float | None = None
    final_eval_loss: float | None = None
    tokens_per_s: float = 0.0
    train_step_compiles: int = 0  # more than 1 means a shape changed mid-run: each recompile costs minutes at scale


def encode(frame: pl.DataFrame, tokenizer: Any, max_length: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept rows with `ids` and `n_prompt`, rejected rows): BOS + prompt + completion; too long is rejected."""
    start = bos_prefix(tokenizer)  # [] for models without BOS (Qwen)
    prompts = [[*start, *tokenizer.encode(p)] for p in frame["prompt"].to_list()]
    completions = [tokenizer.encode(c) for c in frame["completion"].to_list()]
    encoded = frame.with_columns(ids=pl.Series([p + c for p, c in zip(prompts, completions)],
                                               dtype=pl.List(pl.Int32)),
                                 n_prompt=pl.Series([len(p) for p in prompts], dtype=pl.Int32))
    encoded = encoded.with_columns(n_tokens=pl.col("ids").list.len().cast(pl.Int32))
    too_long = pl.col("n_tokens") > max_length
    rejected = encoded.filter(too_long).drop("ids").with_columns(
        reject_reason=pl.lit(Reject.TOO_LONG.value),
        reject_detail=pl.format("{} tokens > sft.max_length {}", pl.col("n_tokens"), pl.lit(max_length)))
    return encoded.filter(~too_long), rejected


def pack(rows: list[tuple[list[int], int]], *, batch_size: int, length: int, pad: int) -> dict[str, np.ndarray]:
    """One batch: tokens right-padded to `length`; the loss mask marks completion tokens only."""
    tokens = np.full((batch_size, length), pad, dtype=np.int32)
    mask = np.zeros((batch_size, length), dtype=np.int32)
    for r, (ids, n_prompt) in enumerate(rows):
        tokens[r, : len(ids)] = ids
        mask[r, n_prompt : len(ids)] = 1
    return {"input_tokens": tokens, "input_mask": mask}


def train_batches(rows: list[tuple[list[int], int]], *, steps: int, batch_size: int, length: int, pad: int,
                  seed: int) -> list[dict[str, np.ndarray]]:
    """Exactly `steps` batches, epochs reshuffled by seed: the same list on a re-run, so resume can skip."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(len(rows)).tolist())
    return [pack([rows[i] for i in order[s * batch_size : (s + 1) * batch_size]], batch_size=batch_size,
                 length=length, pad=pad) for s in range(steps)]


def eval_batches(rows: list[tuple[list[int], int]], *, batch_size: int, length: int, pad: int
                 ) -> list[dict[str, np.ndarray]]:
    """All validation rows; the last batch is filled with empty rows (no loss) to keep one shape."""
    return [pack(rows[lo : lo + batch_size], batch_size=batch_size, length=length, pad=pad)
            for lo in range(0, len(rows), batch_size)]


def loss_fn(model, input_tokens, input_mask, positions, attention_mask):
    """Mean next-token NLL over completion tokens; aux carries (loss, tokens) for the step record."""
    import jax.numpy as jnp
    import optax

    logits, _ = model(input_tokens, positions, None, attention_mask)
    targets, weights = input_tokens[:, 1:], input_mask[:, 1:].astype(jnp.float32)
    # Integer labels: no (batch, length, 262k) one-hot tensor as in Tunix's default loss.
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), targets)
    tokens = weights.sum()
    loss = (nll * weights).sum() / jnp.maximum(tokens, 1.0)
    return loss, {"loss": loss, "tokens": tokens}


def model_inputs(pad: int):
    """Tunix's gen_model_input_fn: positions and causal attention from the padding."""
    from tunix.sft import utils

    def build(batch):
        tokens = batch["input_tokens"]
        valid = tokens != pad
        return {"input_tokens": tokens, "input_mask": batch["input_mask"],
                "positions": utils.build_positions_from_mask(valid),
                "attention_mask": utils.make_causal_attn_mask(valid)}

    return build


class MetricsLog:
    """metrics.jsonl, appended as steps finish; on resume, cut back to the restored checkpoint.

    `progress`, when given, gets the fraction of `total_steps` done after every train step.
    """

    def __init__(self, path: Path, tokens_per_step: list[int], *, progress: Callable[[float], None] | None = None,
                 total_steps: int = 0):
        self.path = path
        self.tokens_per_step = tokens_per_step
        self.progress, self.total_steps = progress, total_steps
        self._last = time.perf_counter()
        self._eval: list[tuple[float, float]] = []

    def resume_at(self, step: int) -> None:
        """Keep rows up to the restored step (steps after it run again; its eval runs again at start)."""
        rows = self.rows()
        kept = [r for r in rows if r["step"] < step or (r["step"] == step and "eval_loss" not in r)]
        if len(kept) != len(rows) or step == 0:
            store.atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._last = time.perf_counter()

    def rows(self) -> list[dict[str, Any]]:
        """Every record so far (a torn last line from a kill is skipped)."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                logger.warning("%s: skipping a torn line (the run was killed mid-write)", self.path)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Write one record and flush it to disk now (on a pod, process 0 only: one line per step)."""
        if not mesh.is_primary():
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def train_step(self, step: int, loss: float | None, extra: dict[str, Any] | None = None, *,
                   tokens: int | None = None) -> None:
        """Record a finished train step (1-based) with its wall time and throughput."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        if tokens is None:
            tokens = self.tokens_per_step[step - 1] if step - 1 < len(self.tokens_per_step) else 0
        self.append({"step": step, "loss": loss, "tokens": tokens, "seconds": round(seconds, 4),
                     "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None, **(extra or {})})
        if self.progress is not None and self.total_steps:
            self.progress(min(step / self.total_steps, 1.0))

    def eval_batch(self, loss: float, tokens: float) -> None:
        """Accumulate one eval batch."""
        self._eval.append((loss, tokens))

    def eval_end(self, step: int) -> None:
        """Record the token-weighted eval loss at this step."""
        total = sum(t for _, t in self._eval)
        if total > 0:  # all-padding eval batches carry no tokens
            self.append({"step": step, "eval_loss": sum(l * t for l, t in self._eval) / total})
        self._eval = []
        self._last = time.perf_counter()  # eval time is not a train step's time

    def table(self) -> pl.DataFrame:
        """One row per step: train columns joined with the eval loss where one was computed."""
        rows = self.rows()
        train = pl.DataFrame([r for r in rows if "eval_loss" not in r], infer_schema_length=None)
        evals = pl.DataFrame([r for r in rows if "eval_loss" in r], schema={"step": pl.Int64, "eval_loss": pl.Float64})
        if train.is_empty():
            return evals.with_columns(loss=pl.lit(None, pl.Float64))
        if evals.is_empty():
            return train.sort("step")
        return train.join(evals.unique("step", keep="last"), on="step", how="full", coalesce=True).sort("step")


def guard_checkpoints(folder: Path, key: str, *, force: bool) -> None:
    """Checkpoints from another config or input (or any, when forced) are wiped, never resumed."""
    marker = folder / KEY_FILE
    recorded = marker.read_text().strip() if marker.is_file() else None
    if folder.exists() and (force or recorded != key):
        logger.warning("%s: checkpoints are for key %s, not %s%s: starting over", folder,
                       (recorded or "unknown")[:12], key[:12], " (forced)" if force else "")
        shutil.rmtree(folder)
        (folder.parent / METRICS_LOG).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(marker, key.encode())


def checkpoint_options(every: int):
    """Save every `every` steps, keep the last two."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=2)


def _trainer_class():
    """PeftTrainer that reports each step's loss as soon as the step ends.

    Why not TrainingHooks.on_train_step_end: Tunix calls it one step late (to overlap I/O),
    after the step's checkpoint may already be saved, so a kill could leave a gap.
    """
    from tunix.sft import peft_trainer

    class Trainer(peft_trainer.PeftTrainer):
        log: MetricsLog

        def _post_process_train_step(self, aux):
            self.log.train_step(self.train_steps + 1, float(aux["loss"]))

        def _post_process_eval_step(self, aux):
            self.log.eval_batch(float(aux["loss"]), float(aux["tokens"]))

        def _run_eval(self, eval_ds, eval_step_fn):
            super()._run_eval(eval_ds, eval_step_fn)
            self.log.eval_end(self.train_steps)

    return Trainer


@contextlib.contextmanager
def counting_compiles(function: str) -> Iterator[list[int]]:
    """Count XLA compilations of a jitted function while the block runs: [n], filled in as they happen.

    JAX logs every compilation ("Compiling jit(_train_step) ...") at DEBUG on its pxla logger;
    the count is of those records, which are then dropped so nothing extra is printed. Not
    jit's cache size: on a mesh the cache holds two entries for one compiled program.
    """
    jax_logger = logging.getLogger("jax._src.interpreters.pxla")
    counted = [0]

    def count(record: logging.LogRecord) -> bool:
        if record.msg.startswith("Compiling") and record.args and f"({function})" in str(record.args[0]):
            counted[0] += 1
        return record.levelno > logging.DEBUG

    level = jax_logger.level
    jax_logger.setLevel(min(level or logging.DEBUG, logging.DEBUG))
    jax_logger.addFilter(count)
    try:
        yield counted
    finally:
        jax_logger.removeFilter(count)
        jax_logger.setLevel(level)


def train(loaded: registry.LoadedModel, kept: pl.DataFrame, stage_dir: Path, config: Config, *, key: str,
          force: bool, device_mesh: Any = None, progress: Callable[[float], None] | None = None
          ) -> tuple[Any, SftStats]:
    """Train the LoRA adapter on the kept rows; returns (LoRA model, stats without row counts).

    `device_mesh` is the mesh the student was loaded on (default: `mesh.create(config.mesh)`);
    `progress` gets the fraction of steps done after each step.
    """
    import optax
    from tunix.sft import peft_trainer

    sft = config.sft
    pad = max(loaded.tokenizer.pad_id(), 0)
    rows = {split: list(zip(part["ids"].to_list(), part["n_prompt"].to_list()))
            for split in ("train", "validation") for part in [kept.filter(pl.col("split") == split)]}
    longest = max((len(ids) for part in rows.values() for ids, _ in part), default=1)
    length = min(round_up(longest, BUCKET), round_up(sft.max_length, BUCKET))
    lora_model = lora.apply(loaded.model, sft.lora, seed=config.seed)
    stats = SftStats(rows_in=0, kept=0, rejected=0, train_rows=len(rows["train"]),
                     validation_rows=len(rows["validation"]), seq_length=length)
    if not rows["train"] or sft.steps == 0:
        logger.warning("sft: %s; the adapter stays the identity (LoRA B = 0)",
                       "no training rows" if not rows["train"] else "sft.steps is 0")
        return lora_model, stats
    batches = train_batches(rows["train"], steps=sft.steps, batch_size=sft.batch_size, length=length, pad=pad,
                            seed=config.seed)
    evals = eval_batches(rows["validation"], batch_size=sft.batch_size, length=length, pad=pad)
    folder = stage_dir / CHECKPOINTS
    guard_checkpoints(folder, key, force=force)
    log = MetricsLog(stage_dir / METRICS_LOG, [int((b["input_tokens"] != pad).sum()) for b in batches],
                     progress=progress, total_steps=sft.steps)
    training_config = peft_trainer.TrainingConfig(
        eval_every_n_steps=sft.eval_every, max_steps=sft.steps, checkpoint_root_directory=str(folder),
        checkpointing_options=checkpoint_options(sft.checkpoint_every), pbar_description="SFT")
    device_mesh = device_mesh if device_mesh is not None else mesh.create(config.mesh)
    started = time.perf_counter()
    with device_mesh:
        trainer = _trainer_class()(lora_model, optax.adamw(sft.learning_rate), training_config)
        trainer.log = log
        trainer.with_loss_fn(loss_fn, has_aux=True).with_gen_model_input_fn(model_inputs(pad))
        stats.resumed_from = trainer.train_steps
        if trainer.train_steps:
            logger.info("sft: resuming from the checkpoint at step %d of %d", trainer.train_steps, sft.steps)
        log.resume_at(trainer.train_steps)
        try:
            with counting_compiles("_train_step") as compiles:
                trainer.train(batches, evals or None)
        finally:
            trainer.checkpoint_manager.close()  # waits for an in-flight async save
    table = log.table()
    done = table.filter(pl.col("loss").is_not_null())
    stats.steps = trainer.train_steps
    stats.train_step_compiles = compiles[0]
    stats.train_tokens = int(done["tokens"].sum()) if done.height else 0
    seconds = time.perf_counter() - started
    stats.tokens_per_s = round(sum(log.tokens_per_step[stats.resumed_from:]) / seconds, 2) if seconds else 0.0
    stats.final_loss = float(done["loss"][-1]) if done.height else None
    evals_done = table.filter(pl.col("eval_loss").is_not_null()) if "eval_loss" in table.columns else table.clear()
    stats.final_eval_loss = float(evals_done["eval_loss"][-1]) if evals_done.height else None
    return trainer.model, stats


def compute(run_dir: Path, config: Config, *, key: str, force: bool,
            progress: Callable[[float], None] | None = None) -> store.StageResult:
    """Encode, reject too-long rows, train, write the adapter and the merged model; the tables for run_stage."""
    started = time.time()
    frame = store.finished(run_dir, "build").read(formats.SFT_SET)
    device_mesh = mesh.create(config.mesh)
    loaded = load_student(config, device_mesh)
    kept, rejected = encode(frame, loaded.tokenizer, config.sft.max_length)
    stage_dir = run_dir / STAGE
    stage_dir.mkdir(parents=True, exist_ok=True)
    lora_model, stats = train(loaded, kept, stage_dir, config, key=key, force=force, device_mesh=device_mesh,
                              progress=progress)
    lora.save(lora_model, stage_dir / lora.ADAPTER, config=config.sft.lora, base=loaded.source)
    export.write(loaded, lora.fold(loaded.model, lora_model, config.sft.lora), stage_dir / export.MODEL_DIR,
                 dtype=config.student.dtype)
    stats.rows_in, stats.kept, stats.rejected = frame.height, kept.height, rejected.height
    stats.reasons = store.reason_counts(rejected)
    stats.seconds = round(time.time() - started, 3)
    metrics = MetricsLog(stage_dir / METRICS_LOG, []).table() if stats.steps else pl.DataFrame(
        schema={"step": pl.Int64, "loss": pl.Float64})
    columns = ["problem_id", "sample_idx", "split", "n_prompt", "n_tokens"]
    return store.StageResult(kept=kept.select(columns), rejected=rejected, stats=stats, extra={"metrics": metrics})


def load_student(config: Config, device_mesh: Any) -> registry.LoadedModel:
    """The configured student (its pinned revision and dtype), each weight read onto `device_mesh`."""
    return registry.load(config.student.model, seed=config.seed, revision=config.student.revision, mesh=device_mesh,
                         dtype=config.student.dtype)


def student_identity(config: Config) -> str:
    """The student as stage keys record it: a Hub id with the commit its revision resolves to."""
    return registry.identity(config.student.model, revision=config.student.revision)


def run(run_dir: Path, config: Config, *, force: bool = False,
        progress: Callable[[float], None] | None = None) -> store.Manifest:
    """Run the SFT stage on `run_dir/build/sft.parquet` unless a complete output with the same key exists.

    `progress` gets the fraction of training steps done as they finish.
    """
    inputs = {"build_sft": store.finished(run_dir, "build").hash(formats.SFT_SET), "student": student_identity(config)}
    stage_config = {"sft": config.sft.model_dump(mode="json"), "seed": config.seed, "dtype": config.student.dtype,
                    "mesh": config.mesh.model_dump(mode="json")}
    key = store.stage_key(stage_config, inputs)
    return store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, force=force,
                           compute=lambda: compute(run_dir, config, key=key, force=force, progress=progress),
                           outputs=(lora.ADAPTER, *MODEL_FILES))
