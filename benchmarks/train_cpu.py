"""Training speed on CPU: our SFT loop against a bare Tunix loop, and GRPO rollouts on our engine against Tunix's.

SFT. "ours" is `training.sft.train` itself: its trainer subclass (a host read of every
step's loss for metrics.jsonl), its data batches, its orbax checkpoints (every
`--checkpoint-every` steps: at least one falls inside the timed steps) and its progress bar.
"bare" is a plain Tunix PeftTrainer on the same LoRA model (same qwix rank, alpha, targets
and seed), the same optimizer, loss and model-input functions, and no hooks, metrics file
or checkpoints. Both train on one fixed batch of `--batch` rows of exactly `--length`
tokens, so every step costs the same. The loop's own requests for the next batch are
timestamped; a round runs `--warmup + --steps` steps and times the last `--steps`.

GRPO rollouts. The same `training.grpo.train` (same prompts, G generations each, up to
`--grpo-new-tokens` new tokens, temperature and top-k 64 alike) with
`grpo.rollout_engine=vanilla` (Tunix's Sampler) and `=distillery` (our decode loop). A step
is timed from one finished update to the next (the GRPO recorder's per-step seconds in
metrics.jsonl), after `--warmup` steps.

Rounds alternate the two sides of each comparison, `--rounds` >= 3; each figure is the
median over rounds, printed with its spread. Last lines: `sft_ratio_ours_to_bare=X` (ours
seconds/step over bare; target <= 1.05) and `rollout_speedup=Y` (GRPO seconds/step,
vanilla over distillery; target >= 1.5).

    python benchmarks/train_cpu.py [--model gemma3-270m|tiny-gemma3] [--steps 10] [--warmup 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machinery.config import load_config  # noqa: E402
from models import registry  # noqa: E402
from training import lora, mesh, sft  # noqa: E402

PROFILE = "cpu-smoke"


class StampedBatches(list):
    """A list of batches that notes when the training loop asks for each one (and for the end)."""

    stamps: list[float]

    def __iter__(self):
        self.stamps = []  # a new pass (the trainer's is the last one) starts a new record
        for batch in super().__iter__():
            self.stamps.append(time.perf_counter())
            yield batch
        self.stamps.append(time.perf_counter())  # the request that found no more batches

    def seconds_per_step(self, warmup: int, steps: int) -> float:
        """Mean seconds per step of steps warmup+1 … warmup+steps: first request to the request after them."""
        if len(self.stamps) <= warmup + steps:
            raise ValueError(f"the loop asked for {len(self.stamps)} batches; timing {warmup} + {steps} steps needs "
                             f"{warmup + steps + 1}")
        return (self.stamps[warmup + steps] - self.stamps[warmup]) / steps


def fixed_rows(loaded: registry.LoadedModel, batch: int, length: int) -> pl.DataFrame:
    """`batch` train rows encoded as SFT encodes them, each cut to exactly `length` tokens."""
    filler = "<reasoning>We add the tens, then the units, and carry one.</reasoning> "
    frame = pl.DataFrame({
        "prompt": [f"Question {i}: what is {17 * i + 5} + {29 * i + 8}? Answer in the format." for i in range(batch)],
        "completion": [filler * (length // 8 + 4) + f"<answer>{46 * i + 13}</answer>" for i in range(batch)],
        "split": ["train"] * batch})
    kept, _ = sft.encode(frame, loaded.tokenizer, max_length=10**9)
    kept = kept.with_columns(pl.col("ids").list.head(length))
    short = kept.filter(pl.col("ids").list.len() < length)
    if short.height:
        raise ValueError(f"synthetic rows are shorter than --length {length}; lengthen the filler")
    return kept


def sft_ours(loaded, kept: pl.DataFrame, config, warmup: int) -> float:
    """Seconds per step of `sft.train` (trainer, batches, metrics log, checkpoints) after warm-up."""
    real = sft.train_batches
    made: list[StampedBatches] = []

    def stamped(*args, **kwargs):
        made.append(StampedBatches(real(*args, **kwargs)))
        return made[-1]

    with tempfile.TemporaryDirectory() as folder, mock.patch.object(sft, "train_batches", stamped):
        sft.train(loaded, kept, Path(folder), config, key="benchmark", force=True)
    return made[-1].seconds_per_step(warmup, config.sft.steps - warmup)


def sft_bare(loaded, kept: pl.DataFrame, config, warmup: int) -> float:
    """Seconds per step of a plain Tunix PeftTrainer on the same LoRA model and batch."""
    import optax
    from tunix.sft import peft_trainer

    pad = max(loaded.tokenizer.pad_id(), 0)
    steps = config.sft.steps
    batch = sft.pack(list(zip(kept["ids"].to_list(), kept["n_prompt"].to_list())), batch_size=config.sft.batch_size,
                     length=kept["ids"].list.len().max(), pad=pad)
    batches = StampedBatches([batch] * steps)
    lora_model = lora.apply(loaded.model, config.sft.lora, seed=config.seed)
    trainer = peft_trainer.PeftTrainer(lora_model, optax.adamw(config.sft.learning_rate),
                                       peft_trainer.TrainingConfig(eval_every_n_steps=steps, max_steps=steps))
    trainer.with_loss_fn(sft.loss_fn, has_aux=True).with_gen_model_input_fn(sft.model_inputs(pad))
    trainer.train(batches)
    return batches.seconds_per_step(warmup, steps - warmup)


def interleaved(runs: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """Per run, the medians over rounds of (seconds per step, tokens per step); the order alternates each round."""
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name in (list(runs) if round_ % 2 == 0 else list(runs)[::-1]):
            seconds, tokens = runs[name]()
            measured[name].append((seconds, tokens))
            print(f"  round {round_ + 1}/{rounds} {name:<14} {seconds:8.3f} s/step {tokens:7.0f} tokens/step",
                  flush=True)
    for name, values in measured.items():
        times = [s for s, _ in values]
        print(f"  {name:<14} median {statistics.median(times):.3f} s/step (spread {min(times):.3f}..{max(times):.3f})")
    return {name: (statistics.median(s for s, _ in values), statistics.median(t for _, t in values))
            for name, values in measured.items()}


def grpo_prompts(loaded, batch: int) -> pl.DataFrame:
    """`batch` GRPO prompts (GSM8K-style rows, so the rewards need no generator meta) with their token counts."""
    from training import grpo

    frame = pl.DataFrame({
        "problem_id": [f"b{i}" for i in range(batch)],
        "prompt": [f"Question {i}: what is {17 * i + 5} + {29 * i + 8}? Answer in the format." for i in range(batch)],
        "gold": [str(46 * i + 13) for i in range(batch)], "source": ["openai/gsm8k"] * batch})
    return grpo.prompt_lengths(frame, loaded.tokenizer)


def grpo_seconds(loaded, kept: pl.DataFrame, config, engine: str, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, completion tokens per step) of `grpo.train` with one rollout engine, after warm-up."""
    from training import grpo, rewards

    config = config.model_copy(update={"grpo": config.grpo.model_copy(update={"rollout_engine": engine})})
    actor = lora.apply(loaded.model, config.sft.lora, seed=config.seed)  # B = 0: the model an adapter starts from
    with tempfile.TemporaryDirectory() as folder:
        grpo.train(loaded, actor, loaded.model, kept, Path(folder), config, key="benchmark", force=True,
                   reward_fns=rewards.reward_fns())
        rows = [r for r in sft.MetricsLog(Path(folder) / sft.METRICS_LOG, []).rows() if "seconds" in r]
    timed = [r for r in rows if warmup < r["step"] <= warmup + steps]
    if len(timed) < steps:
        raise ValueError(f"GRPO recorded {len(rows)} steps; timing {warmup} + {steps} needs {warmup + steps}")
    return statistics.mean(r["seconds"] for r in timed), statistics.mean(r["tokens"] for r in timed)


def main() -> None:
    """Measure SFT (ours vs bare) and GRPO rollouts (vanilla vs distillery); print the table and the two ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=registry.EMBEDDED, help=f"{registry.EMBEDDED} or {registry.TINY}")
    parser.add_argument("--steps", type=int, default=10, help="timed SFT steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--batch", type=int, default=2, help="SFT rows per step")
    parser.add_argument("--length", type=int, default=256, help="SFT tokens per row (prompt + completion)")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="ours: orbax checkpoint interval (SFT)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (>= 3)")
    parser.add_argument("--grpo-steps", type=int, default=3, help="timed GRPO steps per round")
    parser.add_argument("--grpo-batch", type=int, default=1, help="GRPO prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="GRPO rollouts per prompt (G)")
    parser.add_argument("--grpo-new-tokens", type=int, default=128, help="GRPO completion tokens at most")
    parser.add_argument("--skip-grpo", action="store_true")
    args = parser.parse_args()
    if min(args.steps, args.warmup, args.grpo_steps) < 1 or args.rounds < 3:
        parser.error(f"--steps, --warmup and --grpo-steps must be >= 1 and --rounds >= 3; got {args.steps}, "
                     f"{args.warmup}, {args.grpo_steps}, {args.rounds}")
    if args.checkpoint_every > args.steps:
        parser.error(f"--checkpoint-every {args.checkpoint_every} > --steps {args.steps}: no checkpoint would fall "
                     f"inside the timed steps")
    sets = [f"student.model={args.model}", f"sft.steps={args.warmup + args.steps}", f"sft.batch_size={args.batch}",
            f"sft.max_length={args.length}", f"sft.checkpoint_every={args.checkpoint_every}",
            f"grpo.steps={args.warmup + args.grpo_steps}", f"grpo.batch_size={args.grpo_batch}",
            f"grpo.num_generations={args.generations}", f"grpo.max_new_tokens={args.grpo_new_tokens}",
            f"grpo.checkpoint_every={args.warmup + args.grpo_steps}"]
    config = load_config(PROFILE, sets=sets)
    # Read onto the run's mesh as the stages do, so GRPO's actor and reference share one backbone.
    loaded = sft.load_student(config, mesh.create(config.mesh))
    rows = fixed_rows(loaded, args.batch, args.length)
    sft_tokens = float(args.batch * args.length)
    print(f"model {args.model}; LoRA rank {config.sft.lora.rank}; {args.rounds} rounds of each side, alternating")
    print(f"SFT: batch {args.batch} x {args.length} tokens; {args.warmup} warm-up + {args.steps} timed steps; "
          f"ours checkpoints every {config.sft.checkpoint_every} steps (inside the timed window)", flush=True)
    table = interleaved({"sft ours": lambda: (sft_ours(loaded, rows, config, args.warmup), sft_tokens),
                         "sft bare": lambda: (sft_bare(loaded, rows, config, args.warmup), sft_tokens)}, args.rounds)
    if args.skip_grpo:
        print("GRPO: skipped (--skip-grpo)")
    else:
        g = config.grpo
        prompts = grpo_prompts(loaded, g.batch_size)
        print(f"GRPO: {g.batch_size} prompt(s) x {g.num_generations} generations, up to {g.max_new_tokens} new tokens, "
              f"T={g.temperature}, top-k {g.top_k}; {args.warmup} warm-up + {args.grpo_steps} timed steps", flush=True)
        table |= interleaved({
            engine_name: (lambda engine=engine_name: grpo_seconds(loaded, prompts, config, engine, args.warmup,
                                                                  args.grpo_steps))
            for engine_name in ("vanilla", "distillery")}, args.rounds)
    print(f"{'side':<14} {'s/step':>9} {'tokens/step':>12} {'tokens/s':>9}")
    for name, (seconds, tokens) in table.items():
        print(f"{name:<14} {seconds:9.3f} {tokens:12.0f} {tokens / seconds:9.1f}")
    print(f"sft_ratio_ours_to_bare={table['sft ours'][0] / table['sft bare'][0]:.3f}")
    rollout = f"{table['vanilla'][0] / table['distillery'][0]:.2f}" if "vanilla" in table else "skipped"
    print(f"rollout_speedup={rollout}")


if __name__ == "__main__":
    main()
