"""A teacher behind any OpenAI-compatible endpoint: vLLM, SGLang, Ollama, llama.cpp, Gemini, OpenAI.

The SDK's own retries are off (`max_retries=0`): this module's policy is the only one,
visible and counted. It retries 429, 5xx, timeouts, connection errors and malformed
responses with exponential backoff and full jitter, waiting at least what `Retry-After`
asks. Every finished sample goes to the request cache at once, so a killed run resumes
without asking again, and an identical re-run asks nothing. With several endpoints, each
attempt goes to the one with the fewest requests in flight (`endpoints.Endpoints`). Each
attempt is counted per endpoint (`Usage`): billed when the server sent a `usage` (a malformed
answer too), a failure otherwise; a request the client gave up on (timeout) may still have been
billed by the server, which no client can see.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import openai

from curation.teacher import Completion, Prompt, SamplingParams, Usage, close_answer
from curation.teacher.cache import Ledger, RequestCache
from curation.teacher.endpoints import Endpoints
from curation.teacher.prompts import COMPLETION_STOPS
from machinery import redact

logger = logging.getLogger(__name__)

Style = Literal["chat", "completion"]


Tokens = tuple[int | None, int | None]  # (prompt_tokens, completion_tokens) of a response's usage, None if absent


class MalformedResponse(Exception):
    """The server answered 200 with something that is not a usable completion (it may still have billed it)."""

    def __init__(self, message: str, usage: Tokens = (None, None)):
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; `Retry-After` is a floor."""

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt number `attempt + 1`."""
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        return max(backoff, min(retry_after, self.cap_s)) if retry_after is not None else backoff


def retry_after_seconds(error: Exception) -> float | None:
    """The server's `Retry-After` (seconds or an HTTP date), if the error carries one."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _retryable(error: Exception) -> bool:
    """429, 5xx, timeouts, dropped connections and malformed bodies are worth another try."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    return isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError, MalformedResponse))


class OpenAITeacher:
    """`Teacher` over an OpenAI-compatible server, with bounded concurrency and a request cache."""

    def __init__(self, *, base_url: str | list[str], model: str, api_key: str | None, style: Style = "chat",
                 concurrency: int = 8, timeout_s: float = 60.0, retry: RetryPolicy = RetryPolicy(),
                 native_n: bool = True, cache: RequestCache | None = None, seed: int = 0,
                 progress: bool = True, bench_after: int = 3, bench_s: float = 30.0):
        self.name = model
        self.endpoints = Endpoints([base_url] if isinstance(base_url, str) else list(base_url),
                                   bench_after=bench_after, bench_s=bench_s)
        self.api_key = api_key or "not-set"  # local servers need none; the SDK needs a string
        self.style = style
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retry = retry
        self.native_n = native_n
        self.cache = cache
        self.progress = progress
        self._rng = random.Random(seed)
        self.requests_sent = 0  # HTTP requests, retries included: what a resumed run must not repeat
        self.usage = {e.label: Usage() for e in self.endpoints.all}  # billed per endpoint, since made
        self.cache_hits = 0  # samples the request cache had: asked of no endpoint, billed nothing

    def endpoint_counts(self) -> dict[str, dict[str, int]]:
        """Requests, successes, failures and benchings per endpoint URL, since this teacher was made."""
        return self.endpoints.counts()

    def endpoint_usage(self) -> dict[str, dict[str, int]]:
        """Requests, billed requests, retries and billed tokens per endpoint URL, since this teacher was made."""
        return {label: usage.figures() for label, usage in self.usage.items()}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """n completions per prompt; failures become Completion rows with `error` set."""
        return asyncio.run(self._generate(prompts, params))

    def _bill(self, label: str, attempt: int, usage: Tokens) -> None:
        """Count one attempt on an endpoint: billed if the server sent a usage, whatever else it sent."""
        record = self.usage[label]
        record.requests += 1
        record.retries += attempt > 0
        if usage[0] is not None or usage[1] is not None:
            record.billed += 1
            record.prompt_tokens += usage[0] or 0
            record.completion_tokens += usage[1] or 0

    def _prompt_payload(self, prompt: Prompt) -> Any:
        return list(prompt.messages) if self.style == "chat" else prompt.text

    def _stops(self, params: SamplingParams) -> tuple[str, ...]:
        return params.stop + (COMPLETION_STOPS if self.style == "completion" else ())

    def _params_payload(self, params: SamplingParams) -> dict[str, Any]:
        return {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
                "stop": list(self._stops(params)), "style": self.style}

    async def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        clients = {e.url: openai.AsyncOpenAI(base_url=e.url, api_key=self.api_key, timeout=self.timeout_s,
                                             max_retries=0) for e in self.endpoints.all}
        semaphore = asyncio.Semaphore(self.concurrency)
        ledger = Ledger(self.cache, self.name, [self._prompt_payload(p) for p in prompts], self._params_payload(params),
                        params.n, progress=self.progress)
        self.cache_hits += ledger.hits
        by_prompt: dict[int, list[int]] = {}
        for p, s in ledger.missing:
            by_prompt.setdefault(p, []).append(s)
        jobs = list(by_prompt.items()) if self.native_n else [(p, [s]) for p, s in ledger.missing]

        async def run(p: int, samples: list[int]) -> None:
            async with semaphore:
                done = await self._ask(clients, prompts[p], p, samples, params)
            # A server that ignores `n` returns fewer choices: ask for the rest one by one.
            short = [s for s in samples if s not in done]
            if short:
                self.native_n = False
                await asyncio.gather(*(run(p, [s]) for s in short))
            for completion in done.values():
                ledger.record(completion)

        try:
            await asyncio.gather(*(run(p, samples) for p, samples in jobs))
        finally:
            for client in clients.values():
                await client.close()
        return ledger.completions()

    async def _ask(self, clients: dict[str, openai.AsyncOpenAI], prompt: Prompt, p: int, samples: list[int],
                   params: SamplingParams) -> dict[int, Completion]:
        """One request for len(samples) choices, retried by the policy (each try on the freest endpoint)."""
        started = time.perf_counter()
        last_error = ""
        for attempt in range(self.retry.max_attempts):
            self.requests_sent += 1
            endpoint = self.endpoints.pick()
            try:
                choices, usage = await self._request(clients[endpoint.url], prompt, len(samples), params)
            except Exception as error:  # noqa: BLE001 - classified below; nothing escapes as a crash
                self._bill(endpoint.label, attempt,
                           error.usage if isinstance(error, MalformedResponse) else (None, None))
                self.endpoints.done(endpoint, ok=False, endpoint_fault=_retryable(error))
                last_error = f"{type(error).__name__}: {_describe(error)}"
                if not _retryable(error) or attempt == self.retry.max_attempts - 1:
                    break
                wait = self.retry.delay(attempt, retry_after_seconds(error), self._rng)
                logger.debug("retrying in %.2f s after %s", wait, last_error)
                await asyncio.sleep(wait)
                continue
            self._bill(endpoint.label, attempt, usage)
            self.endpoints.done(endpoint, ok=True)
            latency = time.perf_counter() - started
            per_choice = usage[1] if len(choices) == 1 else None  # usage is summed over choices
            return {s: Completion(prompt_idx=p, sample_idx=s, text=text, finish_reason=reason,
                                  prompt_tokens=usage[0], completion_tokens=per_choice, latency_s=latency,
                                  attempts=attempt + 1, cached=False)
                    for s, (text, reason) in zip(samples, choices)}
        latency = time.perf_counter() - started
        logger.warning("teacher request failed after %d attempts: %s", attempt + 1, last_error)
        return {s: Completion(prompt_idx=p, sample_idx=s, text=None, finish_reason=None, prompt_tokens=None,
                              completion_tokens=None, latency_s=latency, attempts=attempt + 1, cached=False,
                              error=last_error) for s in samples}

    async def _request(self, client: openai.AsyncOpenAI, prompt: Prompt, n: int, params: SamplingParams
                       ) -> tuple[list[tuple[str, str | None]], Tokens]:
        """Send one request; return [(text, finish_reason)] and (prompt_tokens, completion_tokens)."""
        common = {"model": self.name, "n": n, "temperature": params.temperature, "top_p": params.top_p,
                  "max_tokens": params.max_new_tokens, "stop": list(self._stops(params))}
        if self.style == "chat":
            response = await client.chat.completions.create(messages=list(prompt.messages), **common)
        else:
            response = await client.completions.create(prompt=prompt.text, **common)
        # Read before the body is judged: a malformed answer that carries a usage was still billed.
        usage_of = getattr(response, "usage", None)
        usage = (getattr(usage_of, "prompt_tokens", None), getattr(usage_of, "completion_tokens", None))
        choices = getattr(response, "choices", None)
        if not choices:
            raise MalformedResponse(f"response has no choices: {str(response)[:200]!r}", usage)
        texts = []
        for choice in choices:
            text = choice.message.content if self.style == "chat" else choice.text
            if not isinstance(text, str):
                raise MalformedResponse(f"choice {choice.index} has no text", usage)
            text = close_answer(prompt.text_prefix + text if self.style == "completion" else text,
                                choice.finish_reason, params.stop)
            texts.append((text, choice.finish_reason))
        return texts, usage


def _describe(error: Exception) -> str:
    """A short message for an error row (status and body excerpt, never headers, keys or URL credentials)."""
    if isinstance(error, openai.APIStatusError):
        return redact.text(f"HTTP {error.status_code}: {str(error.message)[:200]}")
    return redact.text(str(error)[:200])
