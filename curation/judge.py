"""An optional LLM judge: reads problem, trace and gold answer, and says whether the reasoning is sound.

It runs through the teacher's own client (`OpenAITeacher`: retries with backoff, bounded
concurrency, the request cache), so a killed filter resumes without asking again. Only
traces that passed every cheaper check are sent. A reply that does not start with a
verdict counts as a rejection: the judge did not vouch for the trace.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from curation.teacher import Prompt, SamplingParams, Usage, cost
from curation.teacher.cache import RequestCache
from machinery.config import JudgeConfig

SYSTEM = (
    "You check worked solutions to math problems. Read the problem, the solution and the correct final "
    "answer. The final answer is right; judge only the reasoning: is every step true and does it lead to the "
    "answer? Reply with exactly one line: SOUND, or UNSOUND: followed by the first false or unjustified step."
)
_VERDICT = re.compile(r"^\W*(UNSOUND|SOUND)\b\W*(.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The judge's word on one trace: sound or not and its one-line reason, or the error that prevented it."""

    sound: bool | None  # None: no answer from the judge after its retries
    reason: str


def prompt(problem: str, trace: str, gold: str) -> Prompt:
    """The judge's chat prompt for one trace."""
    user = f"Problem:\n{problem}\n\nSolution:\n{trace}\n\nCorrect final answer: {gold}"
    return Prompt(messages=({"role": "system", "content": SYSTEM}, {"role": "user", "content": user}),
                  text=f"{SYSTEM}\n\n{user}\n\nVerdict:")


def parse(reply: str) -> Verdict:
    """A verdict from the judge's reply; a reply that starts with neither word is a rejection, quoted."""
    match = _VERDICT.match(reply or "")
    if match is None:
        return Verdict(sound=False, reason=f"no SOUND/UNSOUND verdict in the judge's reply: {reply[:120]!r}")
    first_line = match.group(2).strip().splitlines()[0] if match.group(2).strip() else ""
    if match.group(1).upper() == "SOUND":
        return Verdict(sound=True, reason=first_line)
    return Verdict(sound=False, reason=first_line[:300] or "unsound (no reason given)")


class Judge:
    """The judge behind `config.base_url`, with its request cache (`cache`) and key (resolved by the caller)."""

    def __init__(self, config: JudgeConfig, *, api_key: str | None, cache: RequestCache | None,
                 progress: bool = True):
        from curation.teacher.openai_compat import OpenAITeacher, RetryPolicy

        self.client = OpenAITeacher(base_url=config.base_url, model=config.model, api_key=api_key, style="chat",
                                    concurrency=config.concurrency, timeout_s=config.timeout_s,
                                    retry=RetryPolicy(max_attempts=config.max_attempts), cache=cache,
                                    progress=progress)
        self.params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=config.max_new_tokens, stop=())
        self.price = config.price.pair() if config.price is not None else None
        self.seconds = 0.0  # wall time spent asking

    def judge(self, problems: list[str], traces: list[str], golds: list[str]) -> list[Verdict]:
        """One verdict per trace, in order; a request that failed every retry gives `sound=None`."""
        prompts = [prompt(p, t, g) for p, t, g in zip(problems, traces, golds, strict=True)]
        started = time.perf_counter()
        completions = self.client.generate(prompts, self.params)
        self.seconds += time.perf_counter() - started
        return [Verdict(sound=None, reason=c.error) if c.error is not None else parse(c.text or "")
                for c in completions]

    def figures(self) -> dict[str, float]:
        """What the judge cost this run (FilterStats.judge): requests, billed tokens, cache hits, seconds, dollars.

        `cost_usd` is there only with `filter.judge.price`.
        """
        total = Usage()
        for usage in self.client.usage.values():
            total.add(usage)
        dollars = cost(total.prompt_tokens, total.completion_tokens, self.price)
        return {**total.figures(), "from_cache": self.client.cache_hits, "seconds": round(self.seconds, 3),
                **({"cost_usd": dollars} if dollars is not None else {})}
