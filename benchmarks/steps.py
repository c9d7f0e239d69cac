"""Arithmetic step checker: its throughput against the previous Python checker, and its share of a run.

1. `curation.steps.check` over every GSM8K train answer against the previous Python checker (`_check_python`
   of curation/steps.py at commit dbfc103, the last before the rewrite, loaded from git history as a temporary
   module), the two alternating over the rounds: traces/s per round, median and spread (min..max), what each
   found, and `speed_vs_previous_python=X` (median traces/s, new over previous).
2. `share_of_generate_and_filter=Y`: the step check's time for the embedded run's traces (at the median rate
   of 1.) over that run's generate + filter seconds, read from the newest run folder under runs/ holding both
   stages' stats.json, else the README's `make run` figures (generate 139 s, filter 0.7 s, 256 traces).
3. The filter stage (`filters.filter_traces`) on 10,000 GSM8K traces with `filter.check_steps` on and off,
   alternating: `step_check_overhead=X`, median seconds with steps / without, minus 1 (skip: --filter-rounds 0).

    python benchmarks/steps.py [--data ../shared/data/gsm8k/train.jsonl] [--rounds 7] [--filter-rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from curation import filters, steps
from curation.sources import hub
from machinery.config import FilterConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
PREVIOUS = "dbfc103"  # the last commit with the previous Python checker (and its C port)
README_RUN = {"generate": 139.0, "filter": 0.7, "traces": 256}  # README: `make run` on the embedded default


def load_answers(path: Path) -> list[str]:
    """The `answer` field of every row of a GSM8K jsonl file."""
    if not path.is_file():
        raise SystemExit(f"GSM8K train not found at {path}; pass --data PATH to a GSM8K jsonl file")
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def previous_checker(folder: Path):
    """`_check_python` of curation/steps.py at PREVIOUS, written to folder and imported as its own module."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS}:curation/steps.py"],
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"cannot read curation/steps.py at {PREVIOUS} from git history in {ROOT}: {err}") from err
    path = folder / "previous_steps.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_steps", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_steps"] = module
    spec.loader.exec_module(module)
    return module._check_python


def throughput(answers: list[str], rounds: int, previous) -> float:
    """Traces/s of both checkers, alternating which goes first; prints the figures, returns new's median."""
    paths = {"new": steps.check, "previous": previous}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    found = {}
    for round_no in range(1, rounds + 1):
        for name in (("new", "previous") if round_no % 2 else ("previous", "new")):
            started = time.perf_counter()
            found[name] = [paths[name](answer) for answer in answers]
            rates[name].append(len(answers) / (time.perf_counter() - started))
            print(f"round {round_no}: {name:<8} {rates[name][-1]:,.0f} traces/s")
    for name, got in rates.items():
        reports = found[name]
        print(f"{len(answers)} traces, {rounds} rounds, {name}: median {statistics.median(got):,.0f} traces/s "
              f"(spread {min(got):,.0f}..{max(got):,.0f}); flagged {sum(1 for r in reports if r.false)}, claims "
              f"checked {sum(r.checked for r in reports):,}, skipped {sum(r.skipped for r in reports):,}")
    new, old = statistics.median(rates["new"]), statistics.median(rates["previous"])
    ratios = [a / b for a, b in zip(rates["new"], rates["previous"])]
    print(f"speed_vs_previous_python={new / old:.2f} (per round {min(ratios):.2f}..{max(ratios):.2f})")
    return new


def run_seconds() -> tuple[float, float, int, str]:
    """(generate s, filter s, traces filtered, where from): the newest run folder with both, else the README."""
    found = []
    for gen in (ROOT / "runs").glob("**/generate/stats.json"):
        filt = gen.parent.parent / "filter" / "stats.json"
        if filt.is_file():
            found.append((filt.stat().st_mtime, gen, filt))
    if not found:
        return README_RUN["generate"], README_RUN["filter"], README_RUN["traces"], "the README's make-run figures"
    _, gen, filt = max(found)
    gen_stats, filt_stats = json.loads(gen.read_text()), json.loads(filt.read_text())
    source = f"measured stage seconds in {gen.parent.parent}"
    return gen_stats["seconds"], filt_stats["seconds"], filt_stats["rows_in"], source


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
            filters.filter_traces(generations, problems, FilterConfig(check_steps=steps_on))
            seconds[steps_on].append(time.perf_counter() - started)
            print(f"round {round_no}: filter with check_steps={steps_on!s:<5} {seconds[steps_on][-1]:6.2f} s")
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"filter on {generations.height} traces: steps on median {on:.2f} s (spread {min(seconds[True]):.2f}.."
          f"{max(seconds[True]):.2f}), off median {off:.2f} s (spread {min(seconds[False]):.2f}.."
          f"{max(seconds[False]):.2f})")
    print(f"step_check_overhead={on / off - 1:.3f}")


def main() -> None:
    """Time the checkers over all answers, then the step check's share of a run and of the filter stage."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--filter-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1 or args.filter_rounds < 0:
        raise SystemExit(f"--rounds must be >= 1 and --filter-rounds >= 0, got {args.rounds}, {args.filter_rounds}")
    answers = load_answers(args.data)
    with tempfile.TemporaryDirectory() as folder:
        rate = throughput(answers, args.rounds, previous_checker(Path(folder)))
    generate_s, filter_s, traces, source = run_seconds()
    check_s = traces / rate
    print(f"step check for {traces} traces at {rate:,.0f} traces/s: {check_s:.3f} s; generate {generate_s:.1f} s + "
          f"filter {filter_s:.1f} s ({source})")
    print(f"share_of_generate_and_filter={check_s / (generate_s + filter_s):.5f}")
    if args.filter_rounds:
        filter_overhead(args.data, args.filter_rounds)


if __name__ == "__main__":
    main()
