"""The embedded teacher: n samples per prompt from a Tunix model on this machine, batched wide.

Few-shot completion prompts (base models need the examples), decoded with
`models.decode.Decoder` (continuous batching over `batch_size` slots; Gemma 3) or Tunix's
Sampler for the other families (`models.sampling.make_decoder`), stopping at `</answer>`. Each sample goes to the same request cache as the OpenAI-compatible teacher the
moment it ends, so a killed run resumes.
"""

from __future__ import annotations

import time

from curation.teacher import Completion, Prompt, SamplingParams, Usage
from curation.teacher.cache import Ledger, RequestCache
from curation.teacher.prompts import COMPLETION_STOPS


class TunixTeacher:
    """`Teacher` over a loaded Tunix model (`models.registry.load`)."""

    def __init__(self, loaded, *, batch_size: int = 32, cache: RequestCache | None = None, seed: int = 0,
                 progress: bool = True):
        from models.sampling import make_decoder

        self.name = loaded.name
        self.decoder = make_decoder(loaded)
        self.batch_size = batch_size
        self.cache = cache
        self.seed = seed
        self.progress = progress
        self.requests_sent = 0  # decode calls
        # What this machine spent: tokens decoded and the process's CPU-seconds (no bill to count)
        self.usage = Usage()
        self.cpu_s = 0.0
        self.cache_hits = 0

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """n completions per prompt, in (prompt, sample) order."""
        stops = params.stop + COMPLETION_STOPS
        payload = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
                   "stop": list(stops), "style": "completion"}
        ledger = Ledger(self.cache, self.name, [p.text for p in prompts], payload, params.n, progress=self.progress)
        # One few-shot header's prompts together, each prompt's samples next to each other: the decoder
        # computes a header once, a prompt once, and only each sample's first token per sample.
        self.cache_hits += ledger.hits
        todo = sorted(ledger.missing, key=lambda item: (_header(prompts[item[0]]), prompts[item[0]].text))
        began = time.perf_counter()

        def done(i: int, generated) -> None:  # recorded (and cached) as each sample ends: a kill loses no other
            p, s = todo[i]
            text = prompts[p].text_prefix + _strip_stops(generated.text, COMPLETION_STOPS)
            self.usage.prompt_tokens += generated.prompt_tokens or 0
            self.usage.completion_tokens += generated.completion_tokens or 0
            ledger.record(Completion(prompt_idx=p, sample_idx=s, text=text, finish_reason=generated.finish_reason,
                                     prompt_tokens=generated.prompt_tokens,
                                     completion_tokens=generated.completion_tokens,
                                     latency_s=time.perf_counter() - began, attempts=1, cached=False))

        if todo:
            cpu_before = time.process_time()
            self.decoder.generate([prompts[p].text for p, _ in todo], max_new_tokens=params.max_new_tokens,
                                  temperature=params.temperature, top_p=params.top_p, stop=stops, seed=self.seed,
                                  slots=self.batch_size, on_done=done)
            self.requests_sent += 1
            self.usage.requests += 1
            self.cpu_s += time.process_time() - cpu_before
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
