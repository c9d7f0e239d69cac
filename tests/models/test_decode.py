"""The decode loop against a plain one-prompt greedy loop, and prompts that end at their first token."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from models import decode, registry


@pytest.fixture(scope="module")
def tiny():
    return registry.load(registry.TINY, seed=0)


@pytest.fixture(scope="module")
def decoder(tiny):
    """One decoder for the module, so its compiled code is reused: calls here ask for 1 or 16 new tokens."""
    return decode.Decoder(tiny.model, tiny.tokenizer)


def plain_greedy(loaded, prompts: list[str], new_tokens: int, width: int = 128) -> list[list[int]]:
    """Per prompt alone, the most likely next token one at a time from Tunix's own forward over the whole
    sequence: no cache, no batch, no shared start (right padding to one width: causal attention ignores it)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graph, state = nnx.split(loaded.model)

    @jax.jit
    def next_token(state, tokens, n):
        logits, _ = nnx.merge(graph, state)(tokens, jnp.arange(width)[None], None,
                                            jnp.tril(jnp.ones((1, width, width), dtype=bool)))
        return jnp.argmax(logits[0, n - 1])

    continuations = []
    for prompt in prompts:
        ids = [loaded.tokenizer.bos_id(), *loaded.tokenizer.encode(prompt)]
        start = len(ids)
        while len(ids) < start + new_tokens:
            tokens = np.zeros((1, width), dtype=np.int32)
            tokens[0, : len(ids)] = ids
            ids.append(int(next_token(state, jnp.asarray(tokens), len(ids))))
        continuations.append(ids[start:])
    return continuations


def test_greedy_continuations_equal_a_plain_one_prompt_loop(tiny, decoder):
    """Shared starts, refilled slots and chunked steps change no token of a greedy continuation."""
    header = "Worked example: 2 + 2 = 4. Worked example: 3 * 3 = 9.\n"  # > 32 tokens: a shared start
    prompts = [header + "Problem: 1 + 1", "abc", header + "Problem: what is 12 * 12", "x" * 50, header + "7 - 5"]
    got = decoder.generate(prompts, max_new_tokens=16, temperature=0.0, slots=2, stop_ids=(-1,))
    assert decoder.shared_starts == [64, 0, 64, 0, 32]  # the header computed once, then "Problem: " on it
    assert [list(g.ids) for g in got] == plain_greedy(tiny, prompts, 16)


def test_two_thousand_prompts_ending_at_their_first_token_decode_in_a_loop(tiny, decoder):
    """Each slot takes prompt after prompt while each ends at once: no recursion, however many there are."""
    prompts = [f"q{i}" for i in range(2000)]
    assert sys.getrecursionlimit() < 2 * len(prompts)  # a call per prompt on the stack would fail here
    finished: list[int] = []
    began = time.perf_counter()
    got = decoder.generate(prompts, max_new_tokens=1, temperature=0.0, slots=4,
                           on_done=lambda i, generated: finished.append(i))
    assert time.perf_counter() - began < 120
    assert finished == list(range(2000))  # each reported once, in prompt order
    assert {(g.completion_tokens, g.finish_reason) for g in got} == {(1, "length")}
    assert [list(g.ids) for g in got[:3]] == plain_greedy(tiny, prompts[:3], 1)


def test_a_stop_id_sampled_first_ends_the_prompt_with_no_text(decoder):
    prompts = [f"question {i}" for i in range(300)]
    firsts = {g.ids[0] for g in decoder.generate(prompts, max_new_tokens=1, temperature=0.0)}
    got = decoder.generate(prompts, max_new_tokens=16, temperature=0.0, stop_ids=tuple(firsts), slots=3)
    assert {(g.text, g.completion_tokens, g.finish_reason) for g in got} == {("", 0, "stop")}


def test_sampling_is_the_same_for_a_seed_and_differs_for_another(decoder):
    prompts = [f"item {i % 3}" for i in range(9)]
    runs = [[g.ids for g in decoder.generate(prompts, max_new_tokens=16, temperature=1.0, seed=seed, slots=4)]
            for seed in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert len(set(runs[0][0::3])) > 1  # one prompt's samples are drawn independently


def test_no_prompts_give_no_results(decoder):
    assert decoder.generate([], max_new_tokens=4) == []
