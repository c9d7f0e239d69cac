"""The embedded teacher: n samples per prompt from a Tunix model on this machine, batched wide.

Few-shot completion prompts (base models need the examples), decoded with
`models.decode.Decoder`, `batch_size` rows at a time, stopping at `</answer>`. Finished
samples go to the same request cache as the OpenAI-compatible teacher, so a killed run
resumes.
"""

from __future__ import annotations

import time

from curation.teacher import Completion, Prompt, SamplingParams
from curation.teacher.cache import Ledger, RequestCache
from curation.teacher.prompts import COMPLETION_STOPS


class TunixTeacher:
    """`Teacher` over a loaded Tunix model (`models.registry.load`)."""

    def __init__(self, loaded, *, batch_size: int = 32, cache: RequestCache | None = None, seed: int = 0,
                 progress: bool = True):
        from models.decode import Decoder

        self.name = loaded.name
        self.decoder = Decoder(loaded.model, loaded.tokenizer)
        self.batch_size = batch_size
        self.cache = cache
        self.seed = seed
        self.progress = progress
        self.requests_sent = 0  # batches decoded

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """n completions per prompt, in (prompt, sample) order."""
        stops = params.stop + COMPLETION_STOPS
        payload = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
                   "stop": list(stops), "style": "completion"}
        ledger = Ledger(self.cache, self.name, [p.text for p in prompts], payload, params.n, progress=self.progress)
        # One batch per few-shot header where possible (the decoder computes a shared start once),
        # and similar lengths together (less padding).
        todo = sorted(ledger.missing, key=lambda item: (_header(prompts[item[0]]), len(prompts[item[0]].text)))
        for lo in range(0, len(todo), self.batch_size):
            batch = todo[lo : lo + self.batch_size]
            began = time.perf_counter()
            out = self.decoder.generate([prompts[p].text for p, _ in batch], max_new_tokens=params.max_new_tokens,
                                        temperature=params.temperature, top_p=params.top_p, stop=stops,
                                        seed=self.seed * 1_000_003 + lo)
            self.requests_sent += 1
            latency = (time.perf_counter() - began) / len(batch)
            for (p, s), generated in zip(batch, out):
                text = prompts[p].text_prefix + _strip_stops(generated.text, COMPLETION_STOPS)
                ledger.record(Completion(prompt_idx=p, sample_idx=s, text=text, finish_reason=generated.finish_reason,
                                         prompt_tokens=generated.prompt_tokens,
                                         completion_tokens=generated.completion_tokens, latency_s=latency,
                                         attempts=1, cached=False))
        return ledger.completions()


def _header(prompt: Prompt) -> tuple[str, ...]:
    """Everything a prompt holds before its own problem: the system prompt and worked examples."""
    return tuple(m["content"] for m in prompt.messages[:-1])


def _strip_stops(text: str, stops: tuple[str, ...]) -> str:
    """Drop a trailing stop string that only marks where the model began a new problem."""
    for stop in stops:
        if text.endswith(stop):
            return text[: -len(stop)]
    return text
