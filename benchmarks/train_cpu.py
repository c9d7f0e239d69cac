"""Training-loop overhead: our SFT (and GRPO) loops against bare Tunix loops on the same batch.

SFT. "ours" is `training.sft.train` itself: its trainer subclass (a host read of every
step's loss for metrics.jsonl), its data batches, its checkpoint options (orbax saves every
`sft.checkpoint_every` steps, as configured) and its progress bar. "bare" is a plain Tunix
PeftTrainer on the same LoRA model (same qwix rank, alpha, targets and seed), the same
optimizer, loss and model-input functions, and no hooks, metrics file or checkpoints. Both
train on one fixed batch of `--batch` rows of exactly `--length` tokens (BOS + prompt +
completion, tokenized by `sft.encode`), so every step costs the same.

GRPO. "ours" is `training/grpo.py`'s learner with the rewards of `training/rewards.py`;
"bare" is Tunix's GRPOLearner on an RLCluster with one trivial reward and the same rollout
settings (stop ids included).

How it is timed: the loop's own requests for the next batch are timestamped (one clock
for both loops); a round runs `--warmup + --steps` steps and times the last `--steps`, so
compilation is not counted. Rounds alternate ours, bare, ours, bare… to spread drift from
other load; each figure is the median over rounds of seconds per step. tokens/s counts
every non-pad token (prompt + completion). Last lines: `sft_ratio_ours_to_bare=X` and
`grpo_ratio_ours_to_bare=Y` (ours seconds/step over bare; <= 1.05 is the target).

    python benchmarks/train_cpu.py [--model gemma3-270m|tiny-gemma3] [--steps 4] [--warmup 2]
                                   [--batch 2] [--length 256] [--rounds 2]
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

from curation.config import load_config  # noqa: E402
from models import registry  # noqa: E402
from training import lora, sft  # noqa: E402

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
    """Per run, the medians over rounds of (seconds per step, tokens per step), rounds alternating the runs."""
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name, run in runs.items():
            seconds, tokens = run()
            measured[name].append((seconds, tokens))
            print(f"  round {round_ + 1}/{rounds} {name:<9} {seconds:8.3f} s/step {tokens:7.0f} tokens/step",
                  flush=True)
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


def grpo_ours(loaded, kept: pl.DataFrame, config, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, completion tokens per step) of `grpo.train`: its cluster, rewards, log, checkpoints."""
    from training import grpo, rewards

    real = grpo.batches
    made: list[StampedBatches] = []

    def stamped(*args, **kwargs):
        made.append(StampedBatches(real(*args, **kwargs)))
        return made[-1]

    actor = lora.apply(loaded.model, config.sft.lora, seed=config.seed)  # B = 0: the model an adapter starts from
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(grpo, "batches", stamped):
        grpo.train(loaded, actor, kept, Path(folder), config, key="benchmark", force=True,
                   reward_fns=rewards.reward_fns())
        rows = sft.MetricsLog(Path(folder) / sft.METRICS_LOG, []).rows()
    completion = {r["step"]: r["tokens"] for r in rows if "tokens" in r}
    timed = [completion.get(step, 0) for step in range(warmup + 1, warmup + steps + 1)]
    return made[-1].seconds_per_step(warmup, steps), sum(timed) / steps


def grpo_bare(loaded, kept: pl.DataFrame, config, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, completion tokens per step) of Tunix's GRPOLearner with one trivial reward."""
    import optax
    from tunix.rl import rl_cluster as rlc
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    from training import evaluate, mesh

    g = config.grpo
    counted: list[int] = []

    def zero(prompts, completions, **kwargs):  # counts tokens as our reward does, so both pay for it
        counted.append(sum(len(loaded.tokenizer.encode(c)) for c in completions))
        return [0.0] * len(completions)

    device_mesh = mesh.create(config.mesh) or mesh.single_device()
    roles = {rlc.Role.ACTOR: device_mesh, rlc.Role.REFERENCE: device_mesh, rlc.Role.ROLLOUT: device_mesh}
    cache = -(-(g.max_prompt_length + g.max_new_tokens) // 64) * 64
    cluster = rlc.RLCluster(
        actor=lora.apply(loaded.model, config.sft.lora, seed=config.seed), reference=loaded.model,
        tokenizer=loaded.tokenizer,
        cluster_config=rlc.ClusterConfig(
            role_to_mesh=roles, rollout_engine="vanilla", offload_to_cpu=False,
            training_config=rlc.RLTrainingConfig(actor_optimizer=optax.adamw(g.learning_rate),
                                                 eval_every_n_steps=g.steps, max_steps=g.steps),
            rollout_config=base_rollout.RolloutConfig(max_tokens_to_generate=g.max_new_tokens,
                                                      max_prompt_length=g.max_prompt_length,
                                                      temperature=g.temperature, kv_cache_size=cache, seed=None,
                                                      eos_tokens=list(evaluate.stop_ids(loaded.tokenizer,
                                                                                        config.student.model)))))
    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster, algo_config=grpo_learner.GRPOConfig(num_generations=g.num_generations, beta=g.beta,
                                                                epsilon=g.epsilon), reward_fns=[zero])
    batch = {"prompts": kept["prompt"].to_numpy(), "gold": kept["gold"].to_numpy(),
             "source": kept["source"].to_numpy()}
    batches = StampedBatches([batch] * g.steps)
    learner.train(batches)
    return batches.seconds_per_step(warmup, steps), sum(counted[warmup : warmup + steps]) / steps


def main() -> None:
    """Measure SFT and GRPO (when training/grpo.py has it), print the table, then the two ratio lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=registry.EMBEDDED, help=f"{registry.EMBEDDED} or {registry.TINY}")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--batch", type=int, default=2, help="SFT rows per step")
    parser.add_argument("--length", type=int, default=256, help="SFT tokens per row (prompt + completion)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each loop")
    parser.add_argument("--grpo-steps", type=int, default=None, help="timed GRPO steps per round (default --steps)")
    parser.add_argument("--grpo-batch", type=int, default=None, help="GRPO prompts per step (default: profile)")
    parser.add_argument("--grpo-new-tokens", type=int, default=None, help="GRPO completion tokens (default: profile)")
    parser.add_argument("--skip-grpo", action="store_true")
    args = parser.parse_args()
    grpo_steps = args.grpo_steps or args.steps
    if min(args.steps, args.warmup, args.rounds, grpo_steps) < 1:
        parser.error(f"--steps, --warmup, --rounds and --grpo-steps must be >= 1; got {args.steps}, {args.warmup}, "
                     f"{args.rounds}, {grpo_steps}")
    sets = [f"student.model={args.model}", f"sft.steps={args.warmup + args.steps}", f"sft.batch_size={args.batch}",
            f"sft.max_length={args.length}", f"grpo.steps={args.warmup + grpo_steps + 1}"]  # +1: a request after
    sets += [f"grpo.batch_size={args.grpo_batch}"] if args.grpo_batch else []
    sets += [f"grpo.max_new_tokens={args.grpo_new_tokens}"] if args.grpo_new_tokens else []
    config = load_config(PROFILE, sets=sets)
    loaded = registry.load(args.model, seed=config.seed)
    rows = fixed_rows(loaded, args.batch, args.length)
    sft_tokens = float(args.batch * args.length)
    print(f"model {args.model}; LoRA rank {config.sft.lora.rank}; {args.rounds} rounds of each loop, alternating")
    print(f"SFT: batch {args.batch} x {args.length} tokens; {args.warmup} warm-up + {args.steps} timed steps; "
          f"ours checkpoints every {config.sft.checkpoint_every} steps", flush=True)
    table = interleaved({"sft ours": lambda: (sft_ours(loaded, rows, config, args.warmup), sft_tokens),
                         "sft bare": lambda: (sft_bare(loaded, rows, config, args.warmup), sft_tokens)}, args.rounds)

    if args.skip_grpo:
        print("GRPO: skipped (--skip-grpo)")
    else:
        g = config.grpo
        prompts = grpo_prompts(loaded, g.batch_size)
        prompt_tokens = float(prompts["prompt_tokens"].sum() * g.num_generations)
        print(f"GRPO: {g.batch_size} prompts x {g.num_generations} generations, up to {g.max_new_tokens} new tokens "
              f"(prompt limit {g.max_prompt_length}); {args.warmup} warm-up + {grpo_steps} timed steps; ours "
              f"checkpoints every {g.checkpoint_every} steps", flush=True)

        def with_prompts(run):
            seconds, completion = run(loaded, prompts, config, args.warmup, grpo_steps)
            return seconds, completion + prompt_tokens

        table |= interleaved({"grpo ours": lambda: with_prompts(grpo_ours),
                              "grpo bare": lambda: with_prompts(grpo_bare)}, args.rounds)

    print(f"{'loop':<10} {'s/step':>9} {'tokens/step':>12} {'tokens/s':>9}")
    for name, (seconds, tokens) in table.items():
        print(f"{name:<10} {seconds:9.3f} {tokens:12.0f} {tokens / seconds:9.1f}")
    print(f"sft_ratio_ours_to_bare={table['sft ours'][0] / table['sft bare'][0]:.3f}")
    grpo = f"{table['grpo ours'][0] / table['grpo bare'][0]:.3f}" if "grpo ours" in table else "skipped"
    print(f"grpo_ratio_ours_to_bare={grpo}")


if __name__ == "__main__":
    main()
