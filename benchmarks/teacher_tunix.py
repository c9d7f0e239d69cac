"""Embedded-teacher sampling speed: our decode loop against Tunix's stock Sampler (and llama.cpp).

Same model (the embedded Gemma 3 270M, float32), same GSM8K prompts, temperature 0.8 over
the whole distribution (top-p 1.0), 128 new tokens, at batch 1, 8 and 32, measured in the
same run after one warm-up call of each shape (compilation is not timed). Tokens are
counted up to each row's end token. The speedup compares wall time for the same prompts,
batch and settings: both loops run until every row has ended or 128 steps, so the figure
does not depend on how many sampled rows happened to end early.
llama.cpp (llama-cpp-python, Q4_K_M, one request at a time) is measured too where installed.
Last line: `speedup_vs_tunix_sampler=X` at batch 32 (Tunix seconds / our seconds).

    python benchmarks/teacher_tunix.py [--batches 1 8 32] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import decode, registry  # noqa: E402
from training import model_check  # noqa: E402

# Benchmarks reproduce figures measured in this workplace, where the Hub-format data lies beside the repo.
SHARED_GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def ours(decoder: decode.Decoder, prompts: list[str], new_tokens: int, seed: int) -> int:
    """Generated tokens of our decode loop."""
    return sum(g.completion_tokens for g in decoder.generate(prompts, max_new_tokens=new_tokens, temperature=0.8,
                                                             seed=seed))


def tunix_sampler(sampler, prompts: list[str], new_tokens: int, seed: int) -> int:
    """Generated tokens of Tunix's Sampler (it cuts each row at its first end token)."""
    # top_p=1.0 is what makes Tunix sample: without a top_p it decodes greedily and ignores the temperature.
    out = sampler(input_strings=prompts, max_generation_steps=new_tokens, temperature=0.8, top_p=1.0, echo=False,
                  seed=seed)
    return sum(len(row) for row in out.tokens)


def timed(fn) -> tuple[int, float]:
    """(tokens, seconds) of one call."""
    started = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - started


def main() -> None:
    """Run every backend at every batch size; print tokens/s and the speedup at batch 32."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--data-files", type=Path, default=SHARED_GSM8K_TEST,
                        help="GSM8K test questions in the Hub's format (default: the workplace's shared copy)")
    args = parser.parse_args()
    from tunix.generate import sampler as sampler_lib
    from tunix.generate.tokenizer_adapter import TokenizerAdapter

    loaded = registry.load(registry.EMBEDDED)
    questions = model_check.questions(args.data_files, max(args.batches))
    decoder = decode.Decoder(loaded.model, loaded.tokenizer)
    config = loaded.config
    sampler = sampler_lib.Sampler(transformer=loaded.model, tokenizer=TokenizerAdapter(loaded.tokenizer),
                                  cache_config=sampler_lib.CacheConfig(cache_size=256, num_layers=config.num_layers,
                                                                       num_kv_heads=config.num_kv_heads,
                                                                       head_dim=config.head_dim))
    seconds_of: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        prompts = questions[:batch]
        runs = {"ours": lambda p, s: ours(decoder, p, args.new_tokens, s),
                "tunix_sampler": lambda p, s: tunix_sampler(sampler, p, args.new_tokens, s)}
        for name, run in runs.items():
            run(prompts, 0)  # compile these shapes (other prompts could pad to another length)
            tokens, seconds = timed(lambda: run(prompts, 1))
            seconds_of[name, batch] = seconds
            print(f"{name:<14} batch {batch:>2}: {tokens:>5} tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tok/s",
                  flush=True)
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: not installed (pip install -e '.[llama]')")
    else:
        llm = Llama(model_path=str(registry.embedded_gguf()), n_ctx=512, verbose=False)
        prompts = questions[: min(8, len(questions))]
        llm(prompts[0], max_tokens=8)  # warm
        started, tokens = time.perf_counter(), 0
        for prompt in prompts:
            tokens += llm(prompt, max_tokens=args.new_tokens, temperature=0.8)["usage"]["completion_tokens"]
        seconds = time.perf_counter() - started
        print(f"{'llama.cpp':<14} serial  : {tokens:>5} tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tok/s")
    top = max(args.batches)
    print(f"speedup_vs_tunix_sampler={seconds_of['tunix_sampler', top] / seconds_of['ours', top]:.2f}")


if __name__ == "__main__":
    main()
