"""Teacher request overhead: the pipeline's OpenAI-compatible teacher against a bare asyncio loop.

Both talk to the same local OpenAI-compatible server (tests/support/fake_openai.py, a real
HTTP server with a fixed per-request latency standing in for the model) with the same
concurrency and `n`. The pipeline adds prompt building, the retry policy, the request
cache on disk and the progress bar. Last line: `overhead_ratio=X` (bare rate / pipeline rate).

    python benchmarks/generate_overhead.py [--prompts 400] [--n 2] [--concurrency 16] [--latency 0.02] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.teacher import SamplingParams, prompts  # noqa: E402
from curation.teacher.cache import RequestCache  # noqa: E402
from curation.teacher.openai_compat import OpenAITeacher  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402


async def bare_loop(base_url: str, messages: list[list[dict]], n: int, concurrency: int) -> int:
    """The plainest correct client: one request per prompt, bounded concurrency, no retries."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(chat: list[dict]) -> int:
        async with semaphore:
            response = await client.chat.completions.create(model="fake", messages=chat, n=n, max_tokens=256,
                                                            temperature=0.8)
            return len(response.choices)

    try:
        return sum(await asyncio.gather(*(one(m) for m in messages)))
    finally:
        await client.close()


def main() -> None:
    """Measure both on fresh prompts (nothing cached), then print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02, help="server seconds per request")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with FakeOpenAI(latency_s=args.latency) as server:
        # Warm both paths (imports, connection pools) so neither pays first-call costs below.
        warm = [prompts.build(f"Warm-up {i}", "openai/gsm8k") for i in range(20)]
        asyncio.run(bare_loop(server.base_url, [list(p.messages) for p in warm], args.n, args.concurrency))
        OpenAITeacher(base_url=server.base_url, model="fake", api_key=None, progress=False).generate(
            warm, SamplingParams(n=args.n))
        bare_times, ours_times = [], []
        for round_ in range(args.rounds):  # alternate, fresh prompts each time: nothing is cached
            bare_prompts = [prompts.build(f"Bare {round_}-{i}: what is {i} + 1?", "openai/gsm8k")
                            for i in range(args.prompts)]
            started = time.perf_counter()
            samples = asyncio.run(bare_loop(server.base_url, [list(p.messages) for p in bare_prompts], args.n,
                                            args.concurrency))
            bare_times.append(time.perf_counter() - started)
            ours_prompts = [prompts.build(f"Pipeline {round_}-{i}: what is {i} + 1?", "openai/gsm8k")
                            for i in range(args.prompts)]
            with tempfile.TemporaryDirectory() as folder:
                cache = RequestCache(Path(folder) / "requests.jsonl")
                teacher = OpenAITeacher(base_url=server.base_url, model="fake", api_key=None,
                                        concurrency=args.concurrency, cache=cache, progress=True)
                started = time.perf_counter()
                out = teacher.generate(ours_prompts, SamplingParams(n=args.n))
                ours_times.append(time.perf_counter() - started)
                cache.close()
            assert samples == len(out) == args.prompts * args.n and all(c.error is None for c in out)
    bare_s, ours_s = statistics.median(bare_times), statistics.median(ours_times)
    bare_rate, ours_rate = args.prompts / bare_s, args.prompts / ours_s
    print(f"bare asyncio loop: {args.prompts} requests in {bare_s:.2f} s (median of {args.rounds}) = "
          f"{bare_rate:.1f} req/s")
    print(f"pipeline teacher:  {args.prompts} requests in {ours_s:.2f} s (median of {args.rounds}) = "
          f"{ours_rate:.1f} req/s "
          f"(retry policy, request cache, progress bar)")
    print(f"overhead_ratio={bare_rate / ours_rate:.3f}")


if __name__ == "__main__":
    main()
