"""Arithmetic step checker: its throughput, and what it adds to the filter stage's time.

1. `curation.steps.check` over every GSM8K train answer: traces/s per round, median and spread
   (min..max), and what it found (flagged traces, claims checked and skipped); the compiled checker
   (curation/_stepscan.c) against the Python path it ports (`steps._check_python`), alternating.
2. The filter stage (`filters.filter_traces`) on 10,000 GSM8K traces (the reference solutions
   in the trace format, a second sample for the first 2,527 problems) with `filter.check_steps`
   on and off, the two sides alternating over the rounds; the last line is
   `step_check_overhead=X`: median seconds with steps / median seconds without, minus 1
   (the issue's target: X <= 0.10).

    python benchmarks/steps.py [--data ../shared/data/gsm8k/train.jsonl] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import polars as pl

from curation import filters, steps
from curation.sources import hub
from machinery.config import FilterConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def load_answers(path: Path) -> list[str]:
    """The `answer` field of every row of a GSM8K jsonl file."""
    if not path.is_file():
        raise SystemExit(f"GSM8K train not found at {path}; pass --data PATH to a GSM8K jsonl file")
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def filter_inputs(path: Path, n: int = 10_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(generations, problems): n GSM8K traces, the reference solution of each problem as `<reasoning>`."""
    problems, _ = hub.load("openai/gsm8k", data_files=path, split="train")
    rows = []
    for i in range(n):
        row = problems.row(i % problems.height, named=True)
        reasoning = row["solution"].rsplit("####", 1)[0].strip()
        rows.append({"problem_id": row["id"], "sample_idx": i // problems.height,
                     "completion": f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{row['answer']}\n</answer>",
                     "finish_reason": "stop", "completion_tokens": None})
    return pl.DataFrame(rows), problems


def filter_overhead(path: Path, rounds: int) -> None:
    """Time the filter stage with and without the step check, alternating, and print the ratio."""
    generations, problems = filter_inputs(path)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for round_no in range(1, rounds + 1):
        for steps_on in (round_no % 2 == 1, round_no % 2 == 0):  # alternate which side goes first
            started = time.perf_counter()
            result = filters.filter_traces(generations, problems, FilterConfig(check_steps=steps_on))
            seconds[steps_on].append(time.perf_counter() - started)
            print(f"round {round_no}: filter with check_steps={steps_on!s:<5} {seconds[steps_on][-1]:6.2f} s, "
                  f"kept {result.kept.height}, rejected {dict(result.stats.reasons)}")
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"filter on {generations.height} traces: steps on median {on:.2f} s (spread {min(seconds[True]):.2f}.."
          f"{max(seconds[True]):.2f}), off median {off:.2f} s (spread {min(seconds[False]):.2f}.."
          f"{max(seconds[False]):.2f})")
    print(f"step_check_overhead={on / off - 1:.3f}")


def main() -> None:
    """Time `check` over all answers for several rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    answers = load_answers(args.data)
    if steps._stepscan is None:
        print("curation._stepscan is not built (no C compiler at install): both sides run the Python path")
    paths = {"compiled": steps.check, "python": steps._check_python}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    reports = []
    for round_no in range(1, args.rounds + 1):
        for name in (("compiled", "python") if round_no % 2 else ("python", "compiled")):
            started = time.perf_counter()
            reports = [paths[name](answer) for answer in answers]
            rates[name].append(len(answers) / (time.perf_counter() - started))
            print(f"round {round_no}: {name:<8} {rates[name][-1]:,.0f} traces/s")
    for name, got in rates.items():
        print(f"{len(answers)} traces, {args.rounds} rounds, {name}: median {statistics.median(got):,.0f} traces/s "
              f"(spread {min(got):,.0f}..{max(got):,.0f})")
    print(f"compiled/python: {statistics.median(rates['compiled']) / statistics.median(rates['python']):.1f}x")
    flagged = sum(1 for report in reports if report.false)
    print(f"flagged {flagged} traces ({flagged / len(answers):.2%}); claims checked "
          f"{sum(r.checked for r in reports):,}, skipped {sum(r.skipped for r in reports):,}")
    filter_overhead(args.data, args.rounds)


if __name__ == "__main__":
    main()
