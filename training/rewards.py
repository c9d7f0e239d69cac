"""GRPO rewards: the curation verdict, turned into numbers.

One code path for curation and training (house style 5, "the verifier is the reward"): the
correctness reward pays only for a completion that `curation.checks.judge` keeps, the same
list of checks the filter stage runs on the teacher's traces (format, loops, language, every
arithmetic step, the answer by math-verify and, for procedural sources, the generator's own
full score). A rollout that reaches the right answer through a false step earns no more than
a wrong one; the format rewards still pay it for its tags. The token-length bounds are the
teacher's and are lifted for rollouts (`checks.rollout_config` says why).

Every reward has Tunix's signature `fn(prompts, completions, **kwargs) -> list[float]`;
Tunix passes the GRPO set's other columns as kwargs: `gold`, `source` and, for procedural
sources, `meta` (the problem's generator entry, carried by the build stage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from curation import answers, checks
from machinery.config import FilterConfig

logger = logging.getLogger(__name__)

CORRECT_REWARD = 1.0
# Smaller than the correctness reward: the format is the means, the right answer the goal.
FORMAT_REWARD = 0.5
# Per tag that appears exactly once: a gradient towards the format before a model meets it whole.
PARTIAL_TAG_REWARD = 0.125

RewardFn = Callable[..., list[float]]


def is_formatted(completion: str | None) -> bool:
    """Exactly one reasoning block then one answer block, nothing outside: the filter's format check."""
    return answers.format_problem(completion) is None


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


def batch_judge(completions: list[str], kwargs: dict[str, Any], config: FilterConfig) -> list[checks.Verdict]:
    """`checks.judge` over a Tunix batch: gold, source and (optional) meta from its kwargs."""
    n = len(completions)
    return checks.judge(completions, _column(kwargs, "gold", n), _column(kwargs, "source", n),
                        _column(kwargs, "meta", n, required=False), config=config,
                        deadline_s=config.check_deadline_s)


def format_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """FORMAT_REWARD for the exact `<reasoning>…</reasoning><answer>…</answer>` format, else 0."""
    return [FORMAT_REWARD if is_formatted(c) else 0.0 for c in completions]


def partial_format_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """PARTIAL_TAG_REWARD for each of the four tags that appears exactly once."""
    return [PARTIAL_TAG_REWARD * sum((c or "").count(tag) == 1 for tag in answers.TAGS) for c in completions]


def correctness_for(config: FilterConfig | None = None) -> RewardFn:
    """The correctness reward under the run's filter bounds (`config.filter`), less the token lengths.

    CORRECT_REWARD when `checks.judge` keeps the completion under `checks.rollout_config(config)`, else 0.
    """
    judged = checks.rollout_config(config)

    # A closure, not functools.partial: Tunix names the reward's metric after its __name__ and
    # passes algo-config values to parameters its signature names, so it keeps Tunix's signature.
    def correctness_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        """CORRECT_REWARD when the filter's checks keep the completion, else 0."""
        found = batch_judge(completions, kwargs, judged)
        rewards = [CORRECT_REWARD if v.reason is None else 0.0 for v in found]
        logger.debug("correctness reward: %d of %d kept", sum(r > 0 for r in rewards), len(rewards))
        return rewards

    return correctness_reward


def correctness_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """CORRECT_REWARD when the filter's checks under `FilterConfig()`'s bounds keep the completion, else 0."""
    return correctness_for(None)(prompts, completions, **kwargs)


def settings(config: FilterConfig | None = None) -> dict[str, Any]:
    """The filter bounds the correctness reward reads under `config`, for the GRPO stage's key."""
    return checks.rollout_config(config).model_dump(mode="json", exclude=set(checks.FILTER_ONLY_FIELDS))


def reward_fns(config: FilterConfig | None = None) -> list[RewardFn]:
    """The GRPO rewards, summed by Tunix: format, partial format, correctness under `config` (the run's filter)."""
    return [format_reward, partial_format_reward, correctness_for(config)]
