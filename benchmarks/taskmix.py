"""What the embedded 270M model can learn from itself: answer accuracy and pass@k per procedural task.

For choosing `cpu-full`'s task mix and difficulty (issue 28, item 2). Each cell is one
procedural task at one difficulty, on `--problems` problems of a dev generator seed (never 1, 2,
3 nor an eval seed). The model is the embedded teacher exactly as a profile runs it
(`curation.generate.make_teacher` with the profile's `teacher.*`: Gemma 3 270M, few-shot
completion prompts, the Tunix decode loop), asked twice per problem:

- greedy (temperature 0, one sample): answer accuracy, as the eval stage scores the base model
  (`training.evaluate.score`: the final answer wherever written, the filter's verifier);
- k samples at the teacher's temperature: pass@k (answer: any sample's answer right; strict:
  any sample kept), the kept-by-filter rate (the filter's per-trace checks with the profile's
  `filter.*` - truncation, format, length, loops, language, steps, answer - i.e. what
  self-distillation keeps before best-of-N), kept traces per 1000 problems after best-of-N
  (`filter.keep_per_problem`), the share of problems with mixed outcomes (what GRPO can learn
  from), and the first reject reasons.

Few-shot sets: `matched` is the repo's prompt (`curation.teacher.prompts.build`: three examples
in the task's own phrasing, `prompts.FEW_SHOT_BY_SOURCE`, each passing the filter's checks:
tests/curation/test_prompts.py); `fixed` is the kind's set it falls back to (`prompts.FEW_SHOT`:
the same three examples for every arithmetic task; the repo's prompt when this was measured). Since
that measurement basic_arithmetic's third example is a 2-term product (`6 * 7`, was `6 * 7 - 5`).
Timing: wall seconds per sample of the sampled call (the greedy call before it compiles the same
shapes), on this machine as it is (shared: see the note).

    nice -n 19 .venv/bin/python benchmarks/taskmix.py [--problems 32] [--k 4] [--seed 1001]
        [--cells ba1,cs1] [--shots fixed,matched] [--deadline 120] [--json out.json] [--samples out.parquet]

Results and the recommendation they led to: /work/bench/taskmix.md (issue 28).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import checks
from curation.generate import make_teacher
from curation.sources import procedural
from curation.teacher import Prompt, SamplingParams, prompts
from machinery.config import Config, load_config
from training import evaluate

# Seeds the cpu-full runs will use for training (1, 2, 3) and the eval sets: never measured here.
RESERVED_SEEDS = {1, 2, 3, 98765}

# (label, task, generator options): 2-3 difficulties per task, easiest first.
CELLS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ba1", "basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                 "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False}),
    ("ba2", "basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                                 "operators": ["+", "-", "*"], "allow_parentheses": False,
                                 "allow_negation": False}),  # cpu-smoke's
    ("ba4", "basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                                 "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False}),
    ("ba3", "basic_arithmetic", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1,
                                 "operators": ["+", "-", "*"], "allow_parentheses": False, "allow_negation": False}),
    ("cs1", "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
    ("cs2", "chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),  # cpu-smoke's
    ("fs1", "fraction_simplification", {"min_value": 1, "max_value": 10, "min_factor": 2, "max_factor": 3,
                                        "styles": ["plain"]}),
    ("fs2", "fraction_simplification", {"min_value": 1, "max_value": 30, "min_factor": 2,
                                        "max_factor": 4}),  # cpu-smoke's
    ("se1", "simple_equations", {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 10,
                                 "operators": ["+", "-"], "operators_weights": [0.5, 0.5]}),
    ("se2", "simple_equations", {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 10,
                                 "operators": ["+", "-", "*"], "operators_weights": [0.3, 0.3, 0.4]}),
    ("gs1", "gsm_symbolic", {}),  # the generator supports difficulty 1.0 only (reasoning-gym 0.1.25)
)

@dataclass(frozen=True, kw_only=True)
class Cell:
    """One measured cell: task, options, few-shot set and its scores."""

    label: str
    task: str
    options: str
    shots: str
    problems: int
    k: int
    greedy_answer: float  # greedy answer accuracy
    greedy_strict: float  # greedy completion kept by the filter's per-trace checks
    pass_answer: float  # pass@k, answer anywhere
    pass_strict: float  # pass@k, a kept trace
    sample_answer: float  # answer accuracy of the k samples
    kept_rate: float  # kept-by-filter rate of the k samples
    solved_problems: float  # problems with at least one kept sample (what SFT gets)
    # kept traces per 1000 problems after best-of-N: distinct kept texts per problem, at most
    # filter.keep_per_problem (exact repeats stand in for the filter's near-identical check: an upper bound)
    traces_per_1000: float
    mixed: float  # problems whose k samples' answers are neither all right nor all wrong (GRPO's)
    s_per_sample: float  # wall seconds per sampled completion
    s_per_greedy: float  # wall seconds per greedy completion (includes any compile)
    cpu_s_per_sample: float  # this process's CPU-seconds per sampled completion (robust to a shared machine)
    tokens_per_sample: float
    rejects: str  # the first reject reasons of the samples, most common first


def few_shot_prompt(problem: str, source: str, shots: str) -> Prompt:
    """`matched`: the repo's prompt (`prompts.build`, the task's own examples); `fixed`: its kind's set."""
    if shots == "fixed":
        return prompts.with_shots(problem, prompts.FEW_SHOT[prompts.kind_of(source)])
    return prompts.build(problem, source)


def kept_flags(rows: pl.DataFrame, problems: pl.DataFrame, config: Config) -> tuple[list[bool], list[str]]:
    """The filter's per-trace verdict of each sample (truncation, then `checks.CHECKS` with filter.*)."""
    facts = rows.join(problems.select("problem_id", "meta"), on="problem_id", how="left", maintain_order="left")
    verdicts = checks.judge(facts["completion"].to_list(), facts["gold"].to_list(), facts["source"].to_list(),
                            facts["meta"].to_list(), config=config.filter_stage(),
                            tokens=facts["completion_tokens"].to_list(), deadline_s=config.filter.check_deadline_s)
    reasons = ["truncated" if finish == "length" else (str(v.reason) if v.reason is not None else "kept")
               for v, finish in zip(verdicts, facts["finish_reason"])]
    return [r == "kept" for r in reasons], reasons


def ask(teacher, built: list[Prompt], problems: pl.DataFrame, params: SamplingParams) -> tuple[pl.DataFrame, float]:
    """The teacher's completions as eval-style rows (problem_id, gold, source, completion, ...), and wall seconds."""
    started = time.perf_counter()
    out = teacher.generate(built, params)
    seconds = time.perf_counter() - started
    ids, golds, sources = problems["problem_id"], problems["gold"], problems["source"]
    rows = pl.DataFrame({
        "problem_id": [ids[c.prompt_idx] for c in out], "sample_idx": [c.sample_idx for c in out],
        "gold": [golds[c.prompt_idx] for c in out], "source": [sources[c.prompt_idx] for c in out],
        "completion": [c.text or "" for c in out], "finish_reason": [c.finish_reason for c in out],
        "completion_tokens": pl.Series([c.completion_tokens for c in out], dtype=pl.Int32)})
    return rows, seconds


def measure(teacher, label: str, task: str, options: dict[str, Any], shots: str, *, n: int, k: int, seed: int,
            config: Config) -> tuple[Cell, pl.DataFrame]:
    """Greedy and k-sample scores of one cell; also the scored sample rows (for reading the failures)."""
    kept, _ = procedural.load(task, n, seed, **options)
    problems = kept.select(pl.col("id").alias("problem_id"), "source", "problem", pl.col("answer").alias("gold"),
                           "meta")
    built = [few_shot_prompt(p, s, shots) for p, s in zip(problems["problem"], problems["source"])]
    t = config.teacher
    greedy, greedy_s = ask(teacher, built, problems, SamplingParams(n=1, temperature=0.0, top_p=t.top_p,
                                                                     max_new_tokens=t.max_new_tokens))
    cpu_before = teacher.cpu_s
    sampled, sampled_s = ask(teacher, built, problems, SamplingParams(n=k, temperature=t.temperature, top_p=t.top_p,
                                                                       max_new_tokens=t.max_new_tokens))
    cpu_s = teacher.cpu_s - cpu_before
    greedy = evaluate.score(greedy, problems, config).with_columns(kept=pl.Series(kept_flags(greedy, problems,
                                                                                             config)[0]))
    flags, reasons = kept_flags(sampled, problems, config)
    sampled = evaluate.score(sampled, problems, config).with_columns(kept=pl.Series(flags), reason=pl.Series(reasons))
    per = sampled.group_by("problem_id").agg(right=pl.col("answer_correct").sum(), kept=pl.col("kept").sum(),
                                             distinct=pl.col("completion").filter(pl.col("kept")).n_unique())
    best = per["distinct"].clip(upper_bound=config.filter.keep_per_problem)
    counts = Counter(r for r in reasons if r != "kept")
    cell = Cell(
        label=label, task=task, options=json.dumps(options, separators=(",", ":")), shots=shots, problems=n, k=k,
        greedy_answer=float(greedy["answer_correct"].mean()), greedy_strict=float(greedy["kept"].mean()),
        pass_answer=float((per["right"] > 0).mean()), pass_strict=float((per["kept"] > 0).mean()),
        sample_answer=float(sampled["answer_correct"].mean()), kept_rate=float(sampled["kept"].mean()),
        solved_problems=float((per["kept"] > 0).mean()), traces_per_1000=1000 * float(best.mean()),
        mixed=float(((per["right"] > 0) & (per["right"] < k)).mean()),
        s_per_sample=sampled_s / sampled.height, s_per_greedy=greedy_s / greedy.height,
        cpu_s_per_sample=cpu_s / sampled.height,
        tokens_per_sample=float(sampled["completion_tokens"].mean()),
        rejects=", ".join(f"{r} {c}" for r, c in counts.most_common(4)))
    return cell, sampled.with_columns(cell=pl.lit(f"{label}/{shots}"))


def table(cells: list[Cell]) -> str:
    """The cells as a markdown table."""
    lines = [("| cell | task | shots | greedy ans | greedy kept | pass@k ans | pass@k kept | sample ans | kept rate "
             "| mixed | traces/1000 | s/sample | CPU-s/sample | tok/sample | rejects (samples) |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in cells:
        lines.append(f"| {c.label} | {c.task} | {c.shots} | {c.greedy_answer:.3f} | {c.greedy_strict:.3f} | "
                     f"{c.pass_answer:.3f} | {c.pass_strict:.3f} | {c.sample_answer:.3f} | {c.kept_rate:.3f} | "
                     f"{c.mixed:.3f} | {c.traces_per_1000:.0f} | {c.s_per_sample:.2f} | {c.cpu_s_per_sample:.2f} | {c.tokens_per_sample:.0f} | {c.rejects} |")
    return "\n".join(lines)


def main() -> None:
    """Measure the chosen cells with each few-shot set and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1001, help="generator seed of the dev problems")
    parser.add_argument("--profile", default="cpu-smoke", help="whose teacher.* and filter.* to use")
    parser.add_argument("--cells", default=",".join(c[0] for c in CELLS))
    parser.add_argument("--shots", default="fixed,matched")
    # The filter's 10 s per answer check gave no verdict on a machine loaded 3x over (math-verify's pool
    # starting up): a longer deadline changes no verdict, it only waits for one.
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per answer check")
    parser.add_argument("--json", type=Path, help="also write the cells here")
    parser.add_argument("--samples", type=Path, help="also write the scored samples here (parquet)")
    args = parser.parse_args()
    if args.seed in RESERVED_SEEDS:
        raise SystemExit(f"--seed {args.seed} is a training or eval seed; pick a dev seed (e.g. 1001)")
    config = load_config(args.profile, sets=[f"filter.check_deadline_s={args.deadline}"])
    wanted = args.cells.split(",")
    unknown = sorted(set(wanted) - {c[0] for c in CELLS})
    if unknown:
        raise SystemExit(f"unknown cells {unknown}; cells: {', '.join(c[0] for c in CELLS)}")
    teacher = make_teacher(config.teacher, None, seed=config.seed, progress=False)
    by_label = {c[0]: c for c in CELLS}
    cells, samples = [], []
    for label in wanted:  # in the order asked: a run cut short has measured the first ones
        _, task, options = by_label[label]
        # A task without matched examples (gsm_symbolic) is measured once, with the fixed set.
        matched = procedural.source_name(task) in prompts.FEW_SHOT_BY_SOURCE
        asked = list(dict.fromkeys(s if s == "fixed" or matched else "fixed" for s in args.shots.split(",")))
        for shots in asked:
            cell, rows = measure(teacher, label, task, options, shots, n=args.problems, k=args.k, seed=args.seed,
                                 config=config)
            cells.append(cell)
            samples.append(rows)
            print(table([cell]).splitlines()[-1], flush=True)
            # written after every cell, so a run stopped early keeps what it measured
            if args.json:
                args.json.write_text(json.dumps([asdict(c) for c in cells], indent=1))
            if args.samples:
                pl.concat(samples, how="diagonal_relaxed").write_parquet(args.samples)
    print(table(cells))


if __name__ == "__main__":
    main()
