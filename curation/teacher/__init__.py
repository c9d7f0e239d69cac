"""Teachers write reasoning traces: one protocol, several backends (OpenAI-compatible, Tunix)."""

from __future__ import annotations

from dataclasses import dataclass
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
