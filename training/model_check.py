"""`distillery model check`: does a model load and behave? A greedy continuation and a perplexity.

The perplexity is over the first 50 GSM8K test questions, each tokenized alone with BOS
first (when the model has one): the negative log-likelihood of every token after the first,
pooled, exponentiated. For the embedded model it must match llama.cpp's on the same tokens
(13.65 there). NAME is a registry name, a Hub id (offline: from the Hugging Face cache) or a
Hugging Face folder such as an exported `grpo/model/`.
"""

from __future__ import annotations

from pathlib import Path

from curation.sources import hub
from models import likelihood, registry
from models.sampling import make_decoder

PROMPT = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"


def questions(data_files: Path | None, n: int = 50) -> list[str]:
    """The first n GSM8K test questions: from the Hub (`openai/gsm8k`), or a local file in its format."""
    kept, _ = hub.load("openai/gsm8k", data_files=data_files, split="test", limit=n)
    return kept["problem"].to_list()


def check(name: str, data_files: Path | None = None, n: int = 50, *, revision: str | None = None
          ) -> tuple[str, float]:
    """(greedy continuation of PROMPT, perplexity on the first n questions)."""
    loaded = registry.load(name, revision=revision)
    continuation = make_decoder(loaded).generate([PROMPT], max_new_tokens=32, temperature=0.0)[0].text
    return continuation, likelihood.perplexity(likelihood.token_nll(loaded, questions(data_files, n)))
