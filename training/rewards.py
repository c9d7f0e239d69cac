"""GRPO rewards: the curation verdict, turned into numbers.

One code path for curation and training (house style 5, "the verifier is the reward"):
the format check is `curation.answers.format_problem`, the same one the filter stage runs,
and correctness is `curation.verifier.verdicts` (math-verify, and for procedural sources the
generator's own full score). A completion counts as correct only when it is also in the
exact format, as the filter keeps only such traces: an answer the format does not commit to
is not an answer.

Every reward has Tunix's signature `fn(prompts, completions, **kwargs) -> list[float]`;
Tunix passes the GRPO set's other columns as kwargs: `gold`, `source` and, for procedural
sources, `meta` (the problem's generator entry, carried by the build stage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from curation import answers, verifier

logger = logging.getLogger(__name__)

CORRECT_REWARD = 1.0
# Smaller than the correctness reward: the format is the means, the right answer the goal.
FORMAT_REWARD = 0.5
# Per tag that appears exactly once: a gradient towards the format before a model meets it whole.
PARTIAL_TAG_REWARD = 0.125

Verdict = tuple[bool, bool]  # (formatted, correct)
RewardFn = Callable[..., list[float]]


def is_formatted(completion: str | None) -> bool:
    """Exactly one reasoning block then one answer block, nothing outside: the filter's format check."""
    return answers.format_problem(completion) is None


def verdicts(completions: Sequence[str | None], gold: Sequence[str], source: Sequence[str],
             meta: Sequence[str | None] | None = None, *, deadline_s: float = 10.0, workers: int = 2
             ) -> list[Verdict]:
    """(formatted, correct) per completion, as the curation filter judges format and answer.

    Only formatted completions pay for math-verify, as in the filter. An answer with no
    verdict in time (`None` from the verifier) is not correct: the filter rejects it too.
    """
    n = len(completions)
    if len(gold) != n or len(source) != n or (meta is not None and len(meta) != n):
        raise ValueError(f"verdicts needs one gold, source (and meta) per completion: {n} completions, "
                         f"{len(gold)} golds, {len(source)} sources, {'no' if meta is None else len(meta)} metas")
    metas = list(meta) if meta is not None else [None] * n
    missing = sorted({s for s, m in zip(source, metas) if s.startswith("procedural/") and not m})
    if missing:
        raise ValueError(f"procedural sources need the problem's meta for the generator's verdict, none given for "
                         f"{', '.join(missing)}; pass meta= (the `meta` column of the dedup stage's problems)")
    formatted = [is_formatted(c) for c in completions]
    todo = [i for i, ok in enumerate(formatted) if ok]
    correct = [False] * n
    if todo:
        checked = verifier.verdicts([completions[i] for i in todo], [gold[i] for i in todo],
                                    [source[i] for i in todo], [metas[i] or "{}" for i in todo],
                                    deadline_s=deadline_s, workers=workers)
        for i, ok in zip(todo, checked):
            correct[i] = ok is True
    return list(zip(formatted, correct))


def _column(kwargs: dict[str, Any], name: str, n: int, *, required: bool = True) -> list[str] | None:
    """A per-completion kwarg as a list of str (Tunix may hand numpy arrays of str or bytes)."""
    if name not in kwargs or kwargs[name] is None:
        if required:
            raise KeyError(f"reward needs the {name!r} column in the GRPO batch; got kwargs {sorted(kwargs)}")
        return None
    values = [v.decode() if isinstance(v, bytes) else (None if v is None else str(v)) for v in kwargs[name]]
    if len(values) != n:
        raise ValueError(f"reward kwarg {name!r} has {len(values)} values for {n} completions")
    return values


def batch_verdicts(completions: list[str], **kwargs: Any) -> list[Verdict]:
    """`verdicts` over a Tunix batch: gold, source and (optional) meta from the kwargs."""
    n = len(completions)
    return verdicts(completions, _column(kwargs, "gold", n), _column(kwargs, "source", n),
                    _column(kwargs, "meta", n, required=False))


def format_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """FORMAT_REWARD for the exact `<reasoning>…</reasoning><answer>…</answer>` format, else 0."""
    return [FORMAT_REWARD if is_formatted(c) else 0.0 for c in completions]


def partial_format_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """PARTIAL_TAG_REWARD for each of the four tags that appears exactly once."""
    return [PARTIAL_TAG_REWARD * sum((c or "").count(tag) == 1 for tag in answers.TAGS) for c in completions]


def correctness_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """CORRECT_REWARD when the curation verdict says correct (format and verified answer), else 0."""
    rewards = [CORRECT_REWARD if correct else 0.0 for _, correct in batch_verdicts(completions, **kwargs)]
    logger.debug("correctness reward: %d of %d correct", sum(r > 0 for r in rewards), len(rewards))
    return rewards


def reward_fns() -> list[RewardFn]:
    """The GRPO rewards, summed by Tunix: format, partial format, correctness."""
    return [format_reward, partial_format_reward, correctness_reward]
