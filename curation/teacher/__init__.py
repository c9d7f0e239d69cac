"""Teachers write reasoning traces: one protocol, several backends (OpenAI-compatible, Tunix)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """One problem's prompt in both shapes: chat messages for chat endpoints, text for base models."""

    messages: tuple[dict[str, str], ...]
    text: str
    text_prefix: str = ""  # the part of the answer that `text` already opens, e.g. "<reasoning>\n"


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to sample: n completions per prompt, temperature, nucleus, length and stop strings."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ("</answer>",)


@dataclass(frozen=True, kw_only=True)
class Completion:
    """One sample for one prompt, or the error that prevented it (never an exception)."""

    prompt_idx: int
    sample_idx: int
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    attempts: int
    cached: bool
    error: str | None = None


@dataclass(kw_only=True)
class Usage:
    """What a teacher (or one of its endpoints) was billed for in one run; cache hits are never billed.

    A request the server answered with a `usage` is billed, a retried one too (a malformed body
    that still carried a usage); an attempt that failed without one is a failure, billed nothing.
    """

    requests: int = 0  # attempts sent, retries included
    billed: int = 0  # attempts answered with a usage
    retries: int = 0  # attempts after a request's first
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        """Add another record's figures to this one."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def figures(self) -> dict[str, int]:
        """The record as a plain dict, as stats.json holds it."""
        return asdict(self)


def cost(prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None) -> float | None:
    """Dollars for these tokens at `price` (dollars per million prompt and completion tokens); None without one."""
    if price is None:
        return None
    return round((prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6, 10)


def dollars(amount: float) -> str:
    """A dollar figure with at least 2 decimals (4 below $10, so a small bill does not read as $0.00)."""
    return f"${amount:,.2f}" if amount >= 10 else f"${amount:.4f}"


class Teacher(Protocol):
    """What the generate stage needs of a teacher backend."""

    name: str

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """n completions for every prompt (errors as Completion rows), ordered by (prompt, sample)."""


def close_answer(text: str, finish_reason: str | None, stop: tuple[str, ...]) -> str:
    """Put back a `</answer>` that a stop string removed, so a finished trace is well formed."""
    if finish_reason == "stop" and "</answer>" in stop and "<answer>" in text and "</answer>" not in text:
        return text.rstrip() + "</answer>"
    return text
