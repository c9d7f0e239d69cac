"""What the generate stage will cost, measured before it runs: a few real requests, scaled up.

A seeded handful of the run's deduplicated problems goes to the configured teacher with the
stage's own sampling settings (n samples each), with no request cache: nothing is read from
or written into the run's generate folder, so the estimate changes no later run. The tokens
the server billed for them, per problem, times the number of problems is the expected bill;
the cost of the estimate itself is reported too, since its requests were real.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from curation import generate
from curation.teacher import Teacher, dollars, prompts
from machinery import store
from machinery.config import TeacherConfig

DEFAULT_SAMPLE = 8  # problems asked: enough for a mean within a few percent on typical traces


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """The expected bill of the whole generate stage, and what measuring it was billed."""

    problems: int  # in the stage (dedup's output)
    sampled: int  # problems asked for this estimate
    samples_per_problem: int
    failed: int  # samples of the estimate that got no answer after their retries
    prompt_tokens: int  # billed for the estimate, retries included
    completion_tokens: int
    seconds: float  # the estimate's wall time
    cost_usd: float | None  # the estimate's own cost (teacher.price)
    expected_prompt_tokens: int
    expected_completion_tokens: int
    expected_seconds: float
    expected_cost_usd: float | None

    def lines(self) -> list[str]:
        """The estimate as the terminal shows it."""
        samples = max(1, self.sampled * self.samples_per_problem)
        whole = self.problems * self.samples_per_problem
        cost = f", {dollars(self.expected_cost_usd)}" if self.expected_cost_usd is not None else " (no teacher.price)"
        spent = f", {dollars(self.cost_usd)}" if self.cost_usd is not None else ""
        asked = (f"estimate: asked the teacher for {self.sampled} of {self.problems} problems x "
                 f"{self.samples_per_problem} samples ({self.failed} failed)")
        per_sample = (f"  per sample: {self.prompt_tokens / samples:,.1f} prompt + "
                      f"{self.completion_tokens / samples:,.1f} completion tokens")
        stage = (f"  generate stage ({self.problems} problems x {self.samples_per_problem} = {whole} samples): about "
                 f"{self.expected_prompt_tokens:,} prompt + {self.expected_completion_tokens:,} completion tokens, "
                 f"{_duration(self.expected_seconds)}{cost}")
        own = (f"  this estimate was billed {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
               f"tokens{spent} in {self.seconds:.1f} s")
        return [asked, per_sample, stage, own]


def _duration(seconds: float) -> str:
    """Seconds as the largest sensible unit: `42 s`, `12.5 min`, `3.2 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def estimate(run_dir: Path, config: TeacherConfig, *, api_key: str | None = None, seed: int = 0,
             sample: int = DEFAULT_SAMPLE, teacher: Teacher | None = None) -> Estimate:
    """Ask the teacher about `sample` seeded problems of `run_dir` and scale their bill to the whole stage.

    `teacher` replaces the configured backend (tests). Needs a finished dedup stage.
    """
    if sample < 1:
        raise ValueError(f"estimate: sample must be at least 1 problem, got {sample}")
    problems = store.finished(run_dir, generate.INPUT_STAGE).read()
    if problems.is_empty():
        raise store.StageInputError(f"{run_dir / generate.INPUT_STAGE}: no problems to estimate the teacher's bill on")
    picked = problems.sample(n=min(sample, problems.height), seed=seed)
    teacher = teacher or generate.make_teacher(config, None, api_key=api_key, seed=seed, progress=False)
    before = generate.teacher_totals(teacher)
    built = [prompts.build(problem, source) for problem, source in picked.select("problem", "source").iter_rows()]
    started = time.perf_counter()
    completions = teacher.generate(built, generate.sampling_params(config))
    seconds = time.perf_counter() - started
    bill = generate.billing(config, [generate.totals_since(generate.teacher_totals(teacher), before)])
    scale = problems.height / picked.height
    return Estimate(
        problems=problems.height, sampled=picked.height, samples_per_problem=config.n,
        failed=sum(c.error is not None for c in completions), prompt_tokens=bill["prompt_tokens"],
        completion_tokens=bill["completion_tokens"], seconds=round(seconds, 3), cost_usd=bill["cost_usd"],
        expected_prompt_tokens=round(bill["prompt_tokens"] * scale),
        expected_completion_tokens=round(bill["completion_tokens"] * scale),
        expected_seconds=round(_stage_seconds(config, teacher, completions, seconds, scale), 1),
        expected_cost_usd=round(bill["cost_usd"] * scale, 10) if bill["cost_usd"] is not None else None)


def _stage_seconds(config: TeacherConfig, teacher: Teacher, completions: list, seconds: float, scale: float) -> float:
    """The stage's expected wall time: its requests in waves of `concurrency`, each as long as the mean one here.

    The embedded teacher decodes everything as one batch: its time grows with the work, so scaled.
    """
    if config.backend != "openai":
        return seconds * scale
    latencies = [c.latency_s for c in completions if c.error is None] or [seconds]
    per_problem = 1 if getattr(teacher, "native_n", True) else config.n  # a server without n: one a sample
    requests = round(len(completions) / max(config.n, 1) * scale) * per_problem
    return math.ceil(requests / config.concurrency) * sum(latencies) / len(latencies)
