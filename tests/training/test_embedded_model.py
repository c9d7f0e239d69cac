"""The embedded Gemma 3 270M against llama.cpp on the same GGUF: perplexity, top-1, tokenizer.

Slow: converts (once per machine) and loads the real model. Needs llama-cpp-python (the
`llama` extra, installed by `make test-slow`) and the GSM8K test file in the shared data folder beside the repo.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from models import likelihood, registry
from training import model_check

pytestmark = pytest.mark.slow

SENTENCES = [
    "Janet’s ducks lay 16 eggs per day.",
    "She sells the remainder at $2 per egg, i.e. 9 * 2 = 18 dollars.",
    "Let $f(x) = \\frac{x^2 - 1}{x + 1}$ for $x \\neq -1$.",
    "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
    "def add(a, b):\n    return a + b",
    "for (int i = 0; i < n; ++i) { sum += i; }",
    "Two  spaces, three   spaces, and\ttabs.",
    "    four leading spaces",
    "Trailing spaces   ",
    "Line one\n\nLine three after a blank line",
    "1,234,567.89 and 0.001 and -42 and 3e8",
    "The year 2026 had 365 days; 2028 will have 366.",
    "He said: \"It's 50% off!\"",
    "x_1 + x_2 + ... + x_n = n(n+1)/2",
    "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>",
    "A café’s crème brûlée costs €4.50.",
    "URL: https://example.com/path?q=1&r=2",
    "CamelCaseIdentifiers and snake_case_ones",
    "((((nested)))) [brackets] {braces}",
    "The end.",
]


@pytest.fixture(scope="module")
def llama():
    try:
        from llama_cpp import Llama
    except ImportError:
        if os.environ.get("DISTILLERY_REQUIRE_SLOW"):
            raise
        pytest.skip("llama-cpp-python not installed: pip install -e '.[llama]' (make test-slow does)")
    return Llama(model_path=str(registry.embedded_gguf()), n_ctx=512, logits_all=True, verbose=False)


@pytest.fixture(scope="module")
def questions(shared_data_module):
    return model_check.questions(shared_data_module / "gsm8k" / "test.jsonl", 50)


@pytest.fixture(scope="module")
def shared_data_module():
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"real Hub-format data not found at {SHARED_DATA}")
    return SHARED_DATA


def _llama_scores(llama, text: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """llama.cpp's token ids (BOS first), per-token NLL after BOS, and top-1 guesses."""
    tokens = llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    llama.reset()
    llama.eval(tokens)
    logits = np.asarray(llama.scores[: len(tokens)], dtype=np.float64)[:-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    targets = np.asarray(tokens[1:])
    return tokens, -logp[np.arange(len(targets)), targets], logits.argmax(-1)


def test_tokenizer_round_trips_and_matches_llama_cpp(llama):
    tokenizer = registry.sentencepiece((registry.converted_embedded() / "tokenizer.model").read_bytes())
    for sentence in SENTENCES:
        ours = tokenizer.encode(sentence)
        assert tokenizer.decode(ours) == sentence
        assert [tokenizer.bos_id(), *ours] == llama.tokenize(sentence.encode(), add_bos=True, special=False), sentence


def test_model_check_perplexity_is_within_5_percent_of_llama_cpp(llama, questions, shared_data_module):
    done = subprocess.run([sys.executable, "-m", "flows.cli", "model", "check", "gemma3-270m", "--data-files",
                           str(shared_data_module / "gsm8k" / "test.jsonl")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"perplexity=\d+\.\d+", last), last
    ours = float(last.split("=")[1])
    reference = float(np.exp(np.concatenate([_llama_scores(llama, q)[1] for q in questions]).mean()))
    print(f"\nperplexity on the first 50 GSM8K test questions: ours {ours:.3f}, llama.cpp {reference:.3f}")
    assert abs(ours / reference - 1) < 0.05


def test_top1_next_token_agrees_with_llama_cpp(llama, questions):
    loaded = registry.load(registry.EMBEDDED)
    ours = likelihood.teacher_forced(loaded, questions)
    agree = total = 0
    for question, (_, top1) in zip(questions, ours):
        _, _, reference = _llama_scores(llama, question)
        agree += int((top1 == reference).sum())
        total += len(reference)
    print(f"\ntop-1 agreement with llama.cpp: {agree / total:.3%} of {total} positions")
    assert agree / total >= 0.95
