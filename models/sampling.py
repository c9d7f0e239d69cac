"""Decoding any Tunix family: our fast loop for Gemma 3, Tunix's `Sampler` for the others.

`models.decode.Decoder` runs Gemma 3's forward only (`models.gemma_forward`). For Qwen and
Llama students and teachers, `SamplerDecoder` offers the same `generate` over
`tunix.generate.sampler.Sampler`: prompts in batches of `slots` (the last one padded to the
same size, so one compiled program serves every batch), BOS + prompt left-padded to a
bucketed length, stop ids ending a row, stop strings cut on the host. Sampling matches the
loop's: greedy at temperature 0, else temperature then top-p among the top 64 tokens.
`make_decoder` picks one and says in one log line when it falls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from models.decode import TOP_K, Decoder, Generated, cut_at_stop, round_up
from models.tokenizer import bos_prefix

logger = logging.getLogger(__name__)


class SamplerDecoder:
    """`Decoder.generate` over Tunix's Sampler: every Tunix family, without continuous batching."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self._samplers: dict[int, Any] = {}  # cache size -> Sampler (each compiles its own programs)

    def _sampler(self, cache_size: int) -> Any:
        from tunix.generate import sampler as sampler_lib

        if cache_size not in self._samplers:
            config = self.model.config
            self._samplers[cache_size] = sampler_lib.Sampler(
                self.model, self.tokenizer, sampler_lib.CacheConfig(
                    cache_size=cache_size, num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
                    head_dim=config.head_dim))
        return self._samplers[cache_size]

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.8, top_p: float = 1.0,
                 stop: tuple[str, ...] = (), stop_ids: tuple[int, ...] = (), seed: int = 0, slots: int = 32,
                 bucket: int = 32, on_done: Callable[[int, Generated], None] | None = None) -> list[Generated]:
        """Continue every prompt (BOS + prompt) until a stop or the length limit; results in prompt order."""
        if not prompts:
            return []
        stop_ids = tuple(stop_ids) or (self.tokenizer.eos_id(),)
        lengths = [len(bos_prefix(self.tokenizer)) + len(self.tokenizer.encode(p)) for p in prompts]
        prompt_length = round_up(max(lengths), bucket)
        sampler = self._sampler(round_up(prompt_length + max_new_tokens, bucket))
        width = max(1, min(slots, len(prompts)))
        results: list[Generated] = []
        for lo in range(0, len(prompts), width):
            batch = list(prompts[lo : lo + width])
            batch += [batch[0]] * (width - len(batch))  # one batch shape: no compile for the last one
            out = sampler(batch, max_generation_steps=max_new_tokens, max_prompt_length=prompt_length,
                          temperature=temperature, top_p=top_p if temperature > 0 else None,
                          top_k=TOP_K if temperature > 0 else None, seed=seed + lo, eos_tokens=list(stop_ids))
            for r in range(min(width, len(prompts) - lo)):
                i = lo + r
                done = self._finish(np.asarray(out.tokens[r]).tolist(), lengths[i], max_new_tokens, stop)
                results.append(done)
                if on_done is not None:
                    on_done(i, done)
        return results

    def _finish(self, ids: list[int], prompt_tokens: int, max_new_tokens: int, stop: tuple[str, ...]) -> Generated:
        """A row as `Decoder` reports it: cut at the first stop string (kept), "stop" or "length"."""
        ended = len(ids) < max_new_tokens  # the Sampler cuts before the stop id it met
        text = self.tokenizer.decode(ids)
        if any(s in text for s in stop):
            ended = True
            ids = ids[: next(k for k in range(1, len(ids) + 1) if any(s in self.tokenizer.decode(ids[:k]) for s in stop))]
            text = cut_at_stop(text, stop)
        return Generated(text=text, finish_reason="stop" if ended else "length", prompt_tokens=prompt_tokens,
                         completion_tokens=len(ids), ids=tuple(ids))


def make_decoder(loaded: Any) -> Decoder | SamplerDecoder:
    """The fast decode loop for Gemma 3, else Tunix's Sampler (one log line says why)."""
    if loaded.family == "gemma3":
        return Decoder(loaded.model, loaded.tokenizer)
    logger.info("%s is a %s model; the fast decode loop runs Gemma 3 only, so it decodes with Tunix's Sampler",
                loaded.name, loaded.family)
    return SamplerDecoder(loaded.model, loaded.tokenizer)
