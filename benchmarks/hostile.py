"""Hostile text through every checker of our own: the slowest input's time and the exceptions, per checker.

1. `--n` generated texts (tests/support/hostile.py: runs of one character, nested braces and
   tags, digits, spaces, unicode digits, `\\boxed{` and `<answer>` runs, mixes; lengths
   log-uniform up to `--max-chars`) through answer extraction (`answers.extract`,
   `plain_number`, `boxed_contents`, `final_answer` where it exists), the format check, the
   step checker (`steps.check`) and the filter's single-row checks. Per checker: the slowest
   input's CPU time (the issue's target: <= 50 ms), its kind and length, and the exceptions
   (target: 0); then the same over all checkers.
2. math-verify's own cost on a sample of the answers those texts give, each in the verifier's
   process pool under its deadline: the slowest item and how many gave no verdict in time.

    python benchmarks/hostile.py [--n 100000] [--max-chars 100000] [--math-verify 200] [--only steps.check]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, when run as a script

from curation import answers, steps  # noqa: E402
from tests.support import hostile  # noqa: E402

TARGET_S = 0.050


def checkers() -> dict[str, Callable[[str], object]]:
    """Every checker of our own that reads one untrusted text."""
    found: dict[str, Callable[[str], object]] = {
        "answers.extract": answers.extract, "answers.plain_number": answers.plain_number,
        "answers.boxed_contents": answers.boxed_contents, "answers.format_problem": answers.format_problem,
        "steps.check": steps.check, "filter row checks": hostile.row_checks()}
    if hasattr(answers, "final_answer"):
        found["answers.final_answer"] = answers.final_answer
    return found


def run_checkers(n: int, max_chars: int, only: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Per checker (all, or those named in `only`): the slowest input (seconds, kind, length) and the exceptions."""
    found = {name: check for name, check in checkers().items() if not only or name in only}
    stats = {name: {"slowest": 0.0, "kind": "", "chars": 0, "errors": 0, "first_error": ""} for name in found}
    for kind, text in hostile.texts(n, seed=0, max_chars=max_chars):
        for name, check in found.items():
            started = time.process_time()
            try:
                check(text)
            except Exception as err:  # noqa: BLE001 - counted and reported
                stats[name]["errors"] += 1
                stats[name]["first_error"] = stats[name]["first_error"] or f"{type(err).__name__}: {err}"[:120]
            took = time.process_time() - started
            if took > stats[name]["slowest"]:
                stats[name].update(slowest=took, kind=kind, chars=len(text))
    return stats


def _timed_compare(pair: tuple[str, str]) -> float:
    """Worker: seconds math-verify takes on one (pred, gold), in a pool process's main thread."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its own timeouts are what this times
    started = time.perf_counter()
    with contextlib.suppress(Exception):  # the verifier counts a crash as a wrong answer; only its time counts here
        answers.compare(*pair)
    return time.perf_counter() - started


def math_verify_sample(n: int, deadline_s: float) -> tuple[int, float, int]:
    """(items, slowest seconds, items past the deadline) of math-verify on answers the hostile texts give."""
    preds = []
    for _, text in hostile.texts(50 * n, seed=1, max_chars=20_000):
        pred = answers.extract(text) or text[: answers.MAX_ANSWER_CHARS]
        if answers.plain_number(pred) is None and len(pred) <= answers.MAX_ANSWER_CHARS:
            preds.append(pred)  # what reaches math-verify: not a plain number, under the cap
        if len(preds) == n:
            break
    slowest, late = 0.0, 0
    pool = cf.ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    try:
        pool.submit(_timed_compare, ("1", "\\frac{1}{2}")).result()  # the sympy import, once per worker
        futures = [pool.submit(_timed_compare, (pred, "\\frac{1}{2}")) for pred in preds]
        for future in futures:
            try:
                slowest = max(slowest, future.result(timeout=deadline_s))
            except cf.TimeoutError:
                late += 1
    finally:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
    return len(preds), slowest, late


def main() -> None:
    """Run both parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--max-chars", type=int, default=100_000)
    parser.add_argument("--math-verify", type=int, default=200, help="answers to time math-verify on (0: skip)")
    parser.add_argument("--deadline", type=float, default=10.0, help="the verifier's deadline per item, seconds")
    parser.add_argument("--only", default="", help="comma-separated checker names to run (default: all)")
    args = parser.parse_args()
    started = time.monotonic()
    stats = run_checkers(args.n, args.max_chars, [name for name in args.only.split(",") if name])
    print(f"{args.n} hostile texts up to {args.max_chars} characters, {time.monotonic() - started:.0f} s")
    print(f"{'checker':26} {'slowest ms':>10} {'kind':>7} {'chars':>7} {'errors':>6}")
    for name, row in stats.items():
        print(f"{name:26} {row['slowest'] * 1000:10.1f} {row['kind']:>7} {row['chars']:7d} {row['errors']:6d}"
              + (f"  first: {row['first_error']}" if row["errors"] else ""))
    worst = max(stats.items(), key=lambda item: item[1]["slowest"])
    errors = sum(row["errors"] for row in stats.values())
    print(f"overall: slowest {worst[1]['slowest'] * 1000:.1f} ms ({worst[0]}, {worst[1]['kind']}, "
          f"{worst[1]['chars']} chars), target <= {TARGET_S * 1000:.0f} ms; exceptions {errors}, target 0")
    if args.math_verify:
        items, slowest, late = math_verify_sample(args.math_verify, args.deadline)
        print(f"math-verify: {items} hostile answers, slowest {slowest:.2f} s, {late} past the "
              f"{args.deadline:.0f} s deadline (no verdict)")


if __name__ == "__main__":
    main()
