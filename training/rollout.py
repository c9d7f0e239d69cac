"""GRPO rollouts on our decode loop: `grpo.rollout_engine: distillery`, a Tunix `BaseRollout`.

Tunix's vanilla engine samples with its stock `Sampler`, whose every step runs the slow
forward and draws from the whole vocabulary (see `models.decode`). This engine samples
with `models.decode.Decoder` (continuous batching, the fused Gemma 3 forward) from the live
actor: it reads the LoRA actor's weights, adapter folded in, at every `generate`, so Tunix
needs no weight sync (`model()` is the actor itself). Sampling settings and stop rules are
the vanilla engine's: temperature, top-p, top-k (the loop samples among the top 64: the
config must say 64), and stop token ids only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from models.decode import TOP_K, Decoder

logger = logging.getLogger(__name__)


class _Tokens:
    """A Tunix TokenizerAdapter seen as the sentencepiece-like tokenizer `Decoder` reads."""

    def __init__(self, adapter: Any):
        self._adapter = adapter

    def encode(self, text: str) -> list[int]:
        """Token ids of text (no BOS)."""
        return list(self._adapter.encode(text))

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self._adapter.decode(ids)

    def bos_id(self) -> int:
        """The begin-of-sequence id."""
        return self._adapter.bos_id()

    def eos_id(self) -> int:
        """The end-of-sequence id."""
        return self._adapter.eos_id()

    def pad_id(self) -> int:
        """The padding id."""
        return self._adapter.pad_id()


def engine(*, lora_scale: float | None):
    """The rollout engine class to give `ClusterConfig.rollout_engine` (the actor's LoRA alpha / rank bound)."""
    from tunix.rl.common import compute_per_token_logps
    from tunix.rl.rollout import base_rollout

    class DistilleryRollout(base_rollout.BaseRollout):
        """Samples GRPO rollouts from the current actor with `models.decode.Decoder`."""

        def __init__(self, rollout_actor: Any, tokenizer: Any, mesh: Any = None, rollout_config: Any = None,
                     **_: Any):
            self._actor, self._adapter = rollout_actor, tokenizer
            self._tokens = _Tokens(tokenizer)
            self._decoder = Decoder(rollout_actor, self._tokens, lora_scale=lora_scale)
            self._calls = 0

        def generate(self, prompts: list[str], rollout_config: Any, **kwargs: Any) -> Any:
            """Completions of every prompt: ids (stop id excluded) and prompts left-padded to max_prompt_length."""
            if rollout_config.top_k != TOP_K:
                raise ValueError(f"grpo rollout top_k={rollout_config.top_k}: the distillery engine samples among "
                                 f"the top {TOP_K}; set grpo.top_k={TOP_K} or grpo.rollout_engine=vanilla")
            self._decoder.set_weights(self._actor, lora_scale=lora_scale)  # the policy as it is now
            seed = rollout_config.seed if rollout_config.seed is not None else self._calls
            self._calls += 1
            out = self._decoder.generate(list(prompts), max_new_tokens=rollout_config.max_tokens_to_generate,
                                         temperature=rollout_config.temperature, top_p=rollout_config.top_p or 1.0,
                                         stop_ids=tuple(rollout_config.eos_tokens or (self.eos_id(),)), seed=seed,
                                         slots=len(prompts))
            completions = [np.asarray(g.ids, dtype=np.int32) for g in out]
            return base_rollout.RolloutOutput(text=[g.text for g in out], logits=None, tokens=completions,
                                              left_padded_prompt_tokens=self._left_padded(prompts, rollout_config),
                                              logprobs=None)

        def _left_padded(self, prompts: list[str], rollout_config: Any) -> np.ndarray:
            """BOS + prompt per row, left-padded to max_prompt_length: one shape for every step's train step."""
            width = rollout_config.max_prompt_length
            rows = np.full((len(prompts), width), self.pad_id(), dtype=np.int32)
            for r, prompt in enumerate(prompts):
                ids = [self.bos_id(), *self._tokens.encode(prompt)][-width:]
                rows[r, width - len(ids):] = ids
            return rows

        def bos_id(self) -> int:
            """The begin-of-sequence id."""
            return self._adapter.bos_id()

        def get_per_token_logps(self, prompt_tokens: Any, completion_tokens: Any) -> Any:
            """Per-token log-probabilities of completions under the current actor (for num_iterations > 1)."""
            from flax import nnx

            graph, state = nnx.split(self._actor)
            return compute_per_token_logps(graph, state, prompt_tokens=prompt_tokens,
                                           completion_tokens=completion_tokens, pad_id=self.pad_id(),
                                           eos_id=self.eos_id(), stop_gradient=True)

        def update_params(self, params: Any, filter_types: Any = None) -> None:
            """Nothing to copy: `generate` reads the actor's live weights."""

        def pad_id(self) -> int:
            """The padding id."""
            return self._adapter.pad_id()

        def eos_id(self) -> int:
            """The end-of-sequence id."""
            return self._adapter.eos_id()

        def model(self) -> Any:
            """The actor itself: Tunix sees the weights shared and skips its weight sync."""
            return self._actor

    return DistilleryRollout
