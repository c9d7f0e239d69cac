"""A real HTTP server speaking the OpenAI chat/completions API, with injectable faults.

Used by tests and benchmarks/generate_overhead.py: it answers on 127.0.0.1 from a thread,
counts requests per prompt, and can fail some of them (500, 429 with Retry-After, stalls,
malformed bodies) on a fixed schedule.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# fault(prompt_key, attempt_number) -> None (answer) or one of "500", "429", "stall", "malformed", "400"
FaultPlan = Callable[[str, int], str | None]
# usage(prompt, n, request_number) -> (prompt_tokens, completion_tokens) the server reports for one answer
UsagePlan = Callable[[str, int, int], tuple[int, int]]


def fixed_usage(prompt: str, n: int, request: int) -> tuple[int, int]:
    """10 prompt tokens and 5 a choice, whatever was asked."""
    return 10, 5 * n


def varying_usage(prompt: str, n: int, request: int) -> tuple[int, int]:
    """Usage that differs from request to request, as a real server's does: the prompt's length in
    tokens of ~4 characters plus 0-2, and 40-80 completion tokens a choice, by a hash of prompt,
    choice and request number (a retry of the same prompt reports other figures)."""
    def spread(*parts: object) -> int:
        return int(hashlib.sha256(repr(parts).encode()).hexdigest(), 16)

    return len(prompt) // 4 + spread(prompt, request) % 3, sum(40 + spread(prompt, i, request) % 41 for i in range(n))


def no_faults(key: str, attempt: int) -> str | None:
    """Always answer."""
    return None


def flaky(key: str, attempt: int) -> str | None:
    """Fail the first attempt of some prompts, by a hash of the prompt: a stable share of faults."""
    if attempt > 1:
        return None
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
    return {0: "500", 1: "429", 2: "stall", 3: "malformed"}.get(bucket)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 refuses connections under concurrent clients


class FakeOpenAI:
    """The server; use as a context manager. `base_url` is what a client needs."""

    def __init__(self, *, faults: FaultPlan = no_faults, latency_s: float = 0.0, supports_n: bool = True,
                 stall_s: float = 8.0, answer: Callable[[str], str] | None = None, die_after: int | None = None,
                 usage: UsagePlan = fixed_usage, bill_malformed: bool = False):
        self.faults = faults
        self.usage = usage
        self.bill_malformed = bill_malformed  # a malformed 200 still carries (and bills) a usage
        self.usage_sent = {"prompt_tokens": 0, "completion_tokens": 0}  # summed over every usage sent
        # After this many answers the server "dies": every later request has its connection closed
        # unanswered, as a crashed replica's would be.
        self.die_after = die_after
        self.answered: collections.Counter[str] = collections.Counter()  # 200s sent, per prompt
        self.latency_s = latency_s
        self.supports_n = supports_n
        self.stall_s = stall_s
        self.answer = answer or (lambda prompt: "42")
        self.attempts: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.authorizations: set[str | None] = set()  # Authorization headers seen
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def dead(self) -> bool:
        """Whether the server has stopped answering (`die_after` answers sent)."""
        return self.die_after is not None and sum(self.answered.values()) >= self.die_after

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _bill(self, prompt: str, n: int) -> dict[str, int]:
        """The usage of one answer (`usage` plan), added to `usage_sent`."""
        with self._lock:
            prompt_tokens, completion_tokens = self.usage(prompt, n, self.requests)
            self.usage_sent["prompt_tokens"] += prompt_tokens
            self.usage_sent["completion_tokens"] += completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = json.dumps(request.get("messages") or request.get("prompt"), sort_keys=True)
                key = hashlib.sha256(prompt.encode()).hexdigest()
                if fake.dead:
                    self.close_connection = True  # no response at all: the client sees a dropped connection
                    return
                with fake._lock:
                    fake.requests += 1
                    fake.authorizations.add(self.headers.get("Authorization"))
                    fake.attempts[key] += 1
                    attempt = fake.attempts[key]
                fault = fake.faults(key, attempt)
                if fake.latency_s:
                    time.sleep(fake.latency_s)
                if fault == "stall":
                    time.sleep(fake.stall_s)
                    return self._send(504, b"{}")
                if fault in ("500", "400"):
                    return self._send(int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode())
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
                n = int(request.get("n") or 1) if fake.supports_n else 1
                if fault == "malformed":
                    body = {"id": "x", "object": "chat.completion", "choices": []}
                    if fake.bill_malformed:
                        body["usage"] = fake._bill(prompt, n)
                    return self._send(200, json.dumps(body).encode())
                text = fake.answer(prompt)
                chat = "messages" in request
                choices = [
                    {"index": i, "finish_reason": "stop", "logprobs": None,
                     **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
                    for i in range(n)
                ]
                with fake._lock:
                    if fake.dead:
                        self.close_connection = True
                        return
                    fake.answered[key] += 1
                body = {"id": f"cmpl-{key[:8]}", "object": "chat.completion" if chat else "text_completion",
                        "created": 0, "model": request["model"], "choices": choices, "usage": fake._bill(prompt, n)}
                self._send(200, json.dumps(body).encode())

        return Handler
