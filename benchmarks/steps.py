"""Arithmetic step checker throughput: `curation.steps.check` over every GSM8K train answer.

One process, the same 7,473 answers each round; prints traces/s per round, then the median and
the spread (min..max) over the rounds, and what the checker found (flagged traces, claims checked
and skipped), so a speed change that also changes the verdicts shows up here.

    python benchmarks/steps.py [--data ../shared/data/gsm8k/train.jsonl] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from curation.steps import check

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def load_answers(path: Path) -> list[str]:
    """The `answer` field of every row of a GSM8K jsonl file."""
    if not path.is_file():
        raise SystemExit(f"GSM8K train not found at {path}; pass --data PATH to a GSM8K jsonl file")
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    """Time `check` over all answers for several rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    answers = load_answers(args.data)
    rates, reports = [], []
    for round_no in range(1, args.rounds + 1):
        started = time.perf_counter()
        reports = [check(answer) for answer in answers]
        rates.append(len(answers) / (time.perf_counter() - started))
        print(f"round {round_no}: {rates[-1]:,.0f} traces/s")
    flagged = sum(1 for report in reports if report.false)
    print(f"{len(answers)} traces, {args.rounds} rounds: median {statistics.median(rates):,.0f} traces/s "
          f"(spread {min(rates):,.0f}..{max(rates):,.0f})")
    print(f"flagged {flagged} traces ({flagged / len(answers):.2%}); claims checked "
          f"{sum(r.checked for r in reports):,}, skipped {sum(r.skipped for r in reports):,}")


if __name__ == "__main__":
    main()
