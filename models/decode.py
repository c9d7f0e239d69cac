"""A batched KV-cache decode loop over a Tunix Gemma 3 model: the fast path for sampling.

Why not Tunix's stock `Sampler` on CPU: it draws each token from the full 262,144-entry
vocabulary for every row at every step, and its forward re-lays out weights and runs a slow
attention every step (see `models.gemma_forward`). Here a step samples among the 64 most
likely tokens (temperature, then nucleus top-p within them), several steps run inside one
jitted `fori_loop` over `gemma_forward`, and stop strings are checked on the host between
chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 64  # candidates per step; the mass beyond them is negligible for a trained LM
CHUNK = 8  # decode steps per device call between host checks


@dataclass(frozen=True, kw_only=True)
class Generated:
    """One generated continuation."""

    text: str
    finish_reason: str  # "stop" (stop string or end token) or "length"
    prompt_tokens: int
    completion_tokens: int


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def top_k(logits, k: int = TOP_K, block: int = 512):
    """Exact top-k over a large vocabulary, in two cheap passes instead of one big one.

    The k largest values lie in the k blocks with the largest maxima, so: max per block,
    top-k blocks, then top-k within them (k * block candidates instead of 262,144).
    """
    import jax
    import jax.numpy as jnp

    batch, vocab = logits.shape
    if vocab <= k * block:
        return jax.lax.top_k(logits, k)
    blocks = -(-vocab // block)
    padded = jnp.pad(logits, ((0, 0), (0, blocks * block - vocab)), constant_values=-jnp.inf)
    grouped = padded.reshape(batch, blocks, block)
    _, best_blocks = jax.lax.top_k(grouped.max(axis=-1), k)
    candidates = jnp.take_along_axis(grouped, best_blocks[:, :, None], axis=1).reshape(batch, k * block)
    values, position = jax.lax.top_k(candidates, k)
    indices = best_blocks[jnp.arange(batch)[:, None], position // block] * block + position % block
    return values, indices


def _sample(logits, key, temperature, top_p):
    """Greedy when temperature is 0, else temperature + top-p among the top-k logits."""
    import jax
    import jax.numpy as jnp

    values, indices = top_k(logits)
    greedy = indices[:, 0].astype(jnp.int32)  # top_k is sorted; a separate argmax would cost as much again
    values = values / jnp.maximum(temperature, 1e-6)
    probs = jax.nn.softmax(values, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the first token always stays
    choice = jax.random.categorical(key, jnp.where(keep, values, -jnp.inf), axis=-1)
    sampled = jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


def _compile(layers: tuple, cache_size: int, chunk: int):
    """The jitted prefill and chunked decode functions for one layer layout and cache size."""
    import jax
    import jax.numpy as jnp

    from models import gemma_forward as gemma

    @jax.jit
    def prefill(weights, shared, tokens, valid, key, temperature, top_p):
        batch, prefix = tokens.shape[0], shared.shape[1]
        cache = gemma.init_cache(weights, layers, 1 if prefix else batch, cache_size)
        if prefix:  # the prompts' common first tokens: computed once, their keys and values copied to every row
            _, cache = gemma.forward(weights, layers, shared, jnp.arange(prefix)[None], cache, valid[:1], 0)
            cache = [(jnp.tile(k, (batch, 1, 1)), jnp.tile(v, (batch, 1, 1))) for k, v in cache]
        positions = prefix + jnp.maximum(jnp.cumsum(valid[:, prefix : prefix + tokens.shape[1]], axis=-1) - 1, 0)
        hidden, cache = gemma.forward(weights, layers, tokens, positions, cache, valid, prefix)
        # Only the last position's logits are needed: (B, L, 262k) of them would be ~10 GB at batch 32.
        first = _sample(gemma.logits(weights, hidden[:, -1]).astype(jnp.float32), key, temperature, top_p)
        return first, positions[:, -1], cache

    def decode(weights, token, position, valid, start, cache, key, temperature, top_p, eos, done):
        def body(i, carry):
            token, position, cache, key, done, out = carry
            position = position + 1
            hidden, cache = gemma.forward(weights, layers, token[:, None], position[:, None], cache, valid, start + i)
            key, sub = jax.random.split(key)
            token = _sample(gemma.logits(weights, hidden[:, 0]).astype(jnp.float32), sub, temperature, top_p)
            done = done | jnp.isin(token, eos)
            return token, position, cache, key, done, out.at[:, i].set(token)

        out = jnp.zeros((token.shape[0], chunk), dtype=jnp.int32)
        return jax.lax.fori_loop(0, chunk, body, (token, position, cache, key, done, out))

    return prefill, jax.jit(decode, donate_argnums=(5,))  # the cache is updated in place


class Decoder:
    """Samples continuations from one Gemma 3 model; compiled functions are reused per cache size."""

    def __init__(self, model, tokenizer):
        from models import gemma_forward

        self.tokenizer = tokenizer
        self._weights, self._layers = gemma_forward.prepare(model)
        self._compiled: dict[int, tuple] = {}
        self.shared_tokens = 0  # prompt tokens of the last batch computed once for all its rows

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.8, top_p: float = 1.0,
                 stop: tuple[str, ...] = (), stop_ids: tuple[int, ...] = (), seed: int = 0,
                 bucket: int = 32) -> list[Generated]:
        """Continue every prompt (one batch): BOS + prompt, left-padded, until a stop or the length limit.

        Prompts that start alike (few-shot prompts) share that start: its cache is computed
        once, in whole `bucket`s of tokens, and the rest of each prompt is left-padded after it
        (the padding is masked; positions stay those of the unpadded prompt).
        """
        import jax
        import jax.numpy as jnp

        tokenizer = self.tokenizer
        bos, pad = tokenizer.bos_id(), tokenizer.pad_id()
        stop_ids = tuple(stop_ids) or (tokenizer.eos_id(),)
        encoded = [[bos, *tokenizer.encode(p)] for p in prompts]
        # Whole buckets only, so batches of one few-shot prompt reuse one compiled shape; every row keeps a token.
        prefix = (_common_prefix(encoded) - 1) // bucket * bucket if len(prompts) > 1 else 0
        self.shared_tokens = prefix
        length = _round_up(max(len(e) for e in encoded) - prefix, bucket)
        steps = _round_up(max_new_tokens, CHUNK)
        tokens = np.full((len(prompts), length), pad, dtype=np.int32)
        for row, ids in enumerate(encoded):
            tokens[row, length - len(ids) + prefix :] = ids[prefix:]
        cache_size = prefix + length + steps
        if cache_size not in self._compiled:
            self._compiled[cache_size] = _compile(self._layers, cache_size, CHUNK)
        prefill, decode = self._compiled[cache_size]
        key, sub = jax.random.split(jax.random.PRNGKey(seed))
        temperature, top_p = jnp.float32(temperature), jnp.float32(top_p)
        # Every row writes a token at every step, so all slots after the prompt hold real tokens.
        valid = jnp.asarray(np.pad(tokens != pad, ((0, 0), (prefix, steps)), constant_values=True))
        shared = jnp.asarray([encoded[0][:prefix]], dtype=jnp.int32)
        token, position, cache = prefill(self._weights, shared, jnp.asarray(tokens), valid, sub, temperature, top_p)
        eos = jnp.asarray(stop_ids, dtype=jnp.int32)
        done = jnp.isin(token, eos)
        generated = [np.asarray(token)[:, None]]
        finished = np.asarray(done)
        for start in range(prefix + length, cache_size - CHUNK + 1, CHUNK):
            if finished.all() or sum(g.shape[1] for g in generated) >= max_new_tokens:
                break
            token, position, cache, key, done, out = decode(self._weights, token, position, valid, start, cache, key,
                                                            temperature, top_p, eos, done)
            generated.append(np.asarray(out))
            finished = np.asarray(done) | _stopped(tokenizer, np.concatenate(generated, axis=1), stop, stop_ids)
        return [_finish(tokenizer, ids, len(encoded[row]), max_new_tokens, stop, stop_ids)
                for row, ids in enumerate(np.concatenate(generated, axis=1))]


def _common_prefix(rows: list[list[int]]) -> int:
    """How many first tokens every row has in common."""
    first, shortest = rows[0], min(len(r) for r in rows)
    for i in range(shortest):
        if any(r[i] != first[i] for r in rows):
            return i
    return shortest


def _stopped(tokenizer, ids: np.ndarray, stop: tuple[str, ...], stop_ids: tuple[int, ...]) -> np.ndarray:
    """Rows whose text already holds a stop string."""
    if not stop:
        return np.zeros(len(ids), dtype=bool)
    return np.array([any(s in tokenizer.decode(_cut_ids(row, stop_ids).tolist()) for s in stop) for row in ids])


def _cut_ids(row: np.ndarray, stop_ids: tuple[int, ...]) -> np.ndarray:
    """Tokens up to (not including) the first end token."""
    ends = np.flatnonzero(np.isin(row, stop_ids)) if stop_ids else []
    return row[: ends[0]] if len(ends) else row


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text up to and including its first stop string (kept, as OpenAI servers drop it)."""
    cuts = [text.index(s) + len(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def _finish(tokenizer, row: np.ndarray, prompt_tokens: int, max_new_tokens: int, stop: tuple[str, ...],
            stop_ids: tuple[int, ...]) -> Generated:
    """Decode a row, cut at the first end token or stop string (which is kept, as OpenAI servers drop it)."""
    ids = _cut_ids(row[:max_new_tokens], stop_ids)
    ended = len(ids) < min(len(row), max_new_tokens)
    full = tokenizer.decode(ids.tolist())
    text = cut_at_stop(full, stop)
    ended = ended or any(s in full for s in stop)
    count = len(tokenizer.encode(text)) if ended else len(ids)
    return Generated(text=text, finish_reason="stop" if ended else "length", prompt_tokens=prompt_tokens,
                     completion_tokens=count)
