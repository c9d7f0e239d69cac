"""A batched KV-cache decode loop over a Tunix Gemma 3 model: the fast path for sampling.

Why not Tunix's stock `Sampler` on CPU: it draws each token from the full 262,144-entry
vocabulary for every row at every step, and its forward re-lays out weights and runs a slow
attention every step (see `models.gemma_forward`). Here a step samples among the 64 most
likely tokens (temperature, then nucleus top-p within them), several steps run inside one
jitted `fori_loop` over `gemma_forward`, and stop strings are checked on the host between
chunks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 64  # candidates per step; the mass beyond them is negligible for a trained LM
CHUNK = 8  # decode steps per device call between host checks
MAX_PREFIXES = 8  # shared-start caches kept per call (least recently used go first)


@dataclass(frozen=True, kw_only=True)
class Generated:
    """One generated continuation."""

    text: str
    finish_reason: str  # "stop" (stop string or end token) or "length"
    prompt_tokens: int
    completion_tokens: int
    ids: tuple[int, ...] = ()  # the completion's token ids, cut where the text is (stop id excluded)


def round_up(n: int, to: int) -> int:
    """n rounded up to a multiple of `to`: the padded lengths that keep compiled shapes few."""
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
    """The jitted functions for one layer layout and cache size: extend one row, place it, decode a chunk."""
    import jax
    import jax.numpy as jnp

    from models import gemma_forward as gemma

    @jax.jit
    def extend(weights, row, tokens, start, length, key, temperature, top_p):
        """Write one row's tokens (1, L; right-padded) at slots start.. of its cache; sample what follows."""
        valid = jnp.ones((1, cache_size), dtype=jnp.bool_)  # slot = position: every earlier slot is this row's
        positions = start + jnp.arange(tokens.shape[1])[None]
        hidden, row = gemma.forward(weights, layers, tokens, positions, row, valid, start)
        last = jax.lax.dynamic_index_in_dim(hidden[0], length - 1, keepdims=False)[None]
        # Only the last real token's logits: (1, L, 262k) of them would be wasted work.
        return _sample(gemma.logits(weights, last).astype(jnp.float32), key, temperature, top_p)[0], row

    def place(cache, row, index):
        """The batch cache with row `index` replaced (the cache is updated in place)."""
        # A row is kv_heads consecutive entries of the (batch * kv_heads, ...) cache.
        return [(jax.lax.dynamic_update_slice(k, rk, (index * rk.shape[0], 0, 0)),
                 jax.lax.dynamic_update_slice(v, rv, (index * rv.shape[0], 0, 0))) for (k, v), (rk, rv) in zip(cache, row)]

    def decode(weights, token, position, cache, key, temperature, top_p):
        """`chunk` steps for every row, each at its own position: continuous batching."""
        valid = jnp.ones((token.shape[0], cache_size), dtype=jnp.bool_)

        def body(i, carry):
            token, position, cache, key, out = carry
            hidden, cache = gemma.forward(weights, layers, token[:, None], position[:, None], cache, valid, position)
            key, sub = jax.random.split(key)
            token = _sample(gemma.logits(weights, hidden[:, 0]).astype(jnp.float32), sub, temperature, top_p)
            return token, position + 1, cache, key, out.at[:, i].set(token)

        out = jnp.zeros((token.shape[0], chunk), dtype=jnp.int32)
        return jax.lax.fori_loop(0, chunk, body, (token, position, cache, key, out))

    # Caches are donated: updated in place, never copied.
    return extend, jax.jit(place, donate_argnums=(0,)), jax.jit(decode, donate_argnums=(3,))


@dataclass
class _Row:
    """One prompt in a decode slot: where its sequence stands, and what it generated so far."""

    index: int
    prompt_tokens: int
    ids: list[int]


@dataclass(frozen=True, kw_only=True)
class _Settings:
    """What one `generate` call asks for, as its jitted functions and host checks read it."""

    max_new_tokens: int
    temperature: Any  # 0-d float32 arrays: a Python float would recompile per value
    top_p: Any
    stop: tuple[str, ...]
    stop_ids: tuple[int, ...]
    bucket: int


class Decoder:
    """Samples continuations from one Gemma 3 model with continuous batching.

    `slots` rows decode together; when a row ends (a stop id or string, or the length limit)
    the next waiting prompt takes its slot at once, so the batch stays full until the queue
    is empty. Each row's cache slot equals its token position, so no prompt is padded to
    another's length. Prompts that start alike (the teacher's few-shot header, a system
    prompt) have that start computed once per call and copied into each row that needs it.
    Compiled functions are reused per cache size and prompt-length bucket.
    """

    def __init__(self, model, tokenizer, *, lora_scale: float | None = None):
        self.tokenizer = tokenizer
        self._compiled: dict[int, tuple] = {}
        self.set_weights(model, lora_scale=lora_scale)

    def set_weights(self, model, *, lora_scale: float | None = None) -> None:
        """Decode with this model's current weights (a GRPO actor after an update); compiled code is kept."""
        from models import gemma_forward

        weights, layers = gemma_forward.prepare(model, lora_scale=lora_scale)
        if self._compiled and layers != self._layers:
            self._compiled.clear()
        self._weights, self._layers = weights, layers
        self.shared_starts: list[int] = []  # per prompt of the last call: first tokens computed once, not per row

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.8, top_p: float = 1.0,
                 stop: tuple[str, ...] = (), stop_ids: tuple[int, ...] = (), seed: int = 0, slots: int = 32,
                 bucket: int = 32, on_done: Callable[[int, Generated], None] | None = None) -> list[Generated]:
        """Continue every prompt (BOS + prompt) until a stop or the length limit; results in prompt order.

        `on_done(i, generated)` runs as soon as prompt i finishes (to record it before the rest).
        """
        import jax.numpy as jnp

        if not prompts:
            self.shared_starts = []
            return []
        tokenizer = self.tokenizer
        encoded = [[tokenizer.bos_id(), *tokenizer.encode(p)] for p in prompts]
        settings = _Settings(max_new_tokens=max_new_tokens, temperature=jnp.float32(temperature),
                             top_p=jnp.float32(top_p), stop=tuple(stop),
                             stop_ids=tuple(stop_ids) or (tokenizer.eos_id(),), bucket=bucket)
        # Room for every padded write (a write pads by less than 4 buckets) and each row's new tokens; it
        # depends on the longest prompt only, so calls with similar prompts reuse the compiled code.
        size = round_up(max(len(e) for e in encoded) + 4 * bucket, 4 * bucket) + round_up(max_new_tokens, CHUNK)
        if size not in self._compiled:
            self._compiled[size] = _compile(self._layers, size, CHUNK)
        call = _Generation(self._compiled[size], self._weights, self._layers, size, tokenizer, encoded, settings,
                           seed=seed, width=max(1, min(slots, len(prompts))), on_done=on_done)
        self.shared_starts = call.starts
        return call.run()


class _Generation:
    """The state of one `Decoder.generate` call: the queue, the slots' rows and cache, the random key.

    A plain loop drives it: a slot whose prompt ends (even at its first token) takes the next
    waiting prompt until one does not end at once or none waits, so any number of prompts that
    end immediately cost no stack depth. Random keys are split in the same order as prompts
    start and chunks run, which fixes every sampled token for a seed.
    """

    def __init__(self, functions: tuple, weights, layers: tuple, size: int, tokenizer, encoded: list[list[int]],
                 settings: _Settings, *, seed: int, width: int, on_done: Callable[[int, Generated], None] | None):
        import jax

        self.extend, self.place, self.decode = functions  # from `_compile`, for this call's cache size
        self.weights, self.tokenizer = weights, tokenizer
        self.encoded, self.settings, self.on_done = encoded, settings, on_done
        self.levels = _shared_levels(encoded, settings.bucket)
        self.starts = [max(lv, default=0) for lv in self.levels]
        self.empty_row = gemma_forward_cache(weights, layers, 1, size)
        self.cache = gemma_forward_cache(weights, layers, width, size)  # a row per slot, replaced as prompts start
        self.key = jax.random.PRNGKey(seed)
        # Shared starts in use, most recent last: prompts come in order, so a few suffice (each holds a cache row).
        self.prefixes: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self.results: list[Generated | None] = [None] * len(encoded)
        self.queue = list(range(len(encoded)))[::-1]  # popped from the end: prompt order
        self.rows: list[_Row | None] = [None] * width
        self.token, self.position = np.zeros(width, dtype=np.int32), np.zeros(width, dtype=np.int32)

    def run(self) -> list[Generated]:
        """Decode chunk by chunk until every prompt has ended; the results in prompt order."""
        import jax
        import jax.numpy as jnp

        for slot in range(len(self.rows)):
            self._fill(slot)
        while any(row is not None for row in self.rows):
            self.key, sub = jax.random.split(self.key)
            _, _, self.cache, _, out = self.decode(self.weights, jnp.asarray(self.token),
                                                   jnp.asarray(self.position), self.cache, sub,
                                                   self.settings.temperature, self.settings.top_p)
            out = np.asarray(out)
            self.position += CHUNK
            self.token[:] = out[:, -1]
            for slot, row in enumerate(self.rows):
                if row is not None:
                    row.ids.extend(out[slot].tolist())
                    if self._ended(row):
                        self._record(row)
                        self._fill(slot)
        return self.results

    def _fill(self, slot: int) -> None:
        """Give the slot the next waiting prompt, and the next while each ends at its first token; else empty it."""
        while self.queue:
            row = self._start(slot, self.queue.pop())
            if not self._ended(row):
                return
            self._record(row)
        self.rows[slot] = None

    def _start(self, slot: int, i: int) -> _Row:
        """Prompt i written into the slot (shared starts copied in), with its first sampled token."""
        import jax

        self.key, sub = jax.random.split(self.key)
        ids, start = self.encoded[i], self.starts[i]
        first, row = self._written(self._prefix(ids, self.levels[i], sub), ids, start, sub)
        self.cache = self.place(self.cache, row, slot)
        self.rows[slot] = started = _Row(index=i, prompt_tokens=len(ids), ids=[first])
        self.token[slot], self.position[slot] = first, len(ids)
        return started

    def _prefix(self, ids: list[int], levels: list[int], key) -> list:
        """The cache of ids' longest shared start; each level built once per call on the level below it."""
        chain = [0, *levels]  # shortest first; the last is the prompt's own start
        have = len(chain) - 1
        while have > 0 and tuple(ids[: chain[have]]) not in self.prefixes:
            have -= 1
        row = self.empty_row
        if have > 0:
            row = self.prefixes[tuple(ids[: chain[have]])]
            self.prefixes.move_to_end(tuple(ids[: chain[have]]))
        for below, length in zip(chain[have:], chain[have + 1 :]):
            _, row = self._written(row, ids[:length], below, key)
            self.prefixes[tuple(ids[:length])] = row  # the newest: never the one evicted
            while len(self.prefixes) > MAX_PREFIXES:
                self.prefixes.popitem(last=False)
        return row

    def _written(self, row, ids: list[int], start: int, key) -> tuple[int, list]:
        """`row` with ids[start:] written after its first `start` tokens; the token sampled next."""
        import jax.numpy as jnp

        tail = ids[start:]
        padded = np.zeros((1, _length_bucket(len(tail), self.settings.bucket)), dtype=np.int32)
        padded[0, : len(tail)] = tail
        first, row = self.extend(self.weights, row, jnp.asarray(padded), start, len(tail), key,
                                 self.settings.temperature, self.settings.top_p)
        return int(first), row

    def _ended(self, row: _Row) -> bool:
        """Whether the row reached the length limit, an end token or a stop string."""
        s = self.settings
        ids = np.asarray(row.ids, dtype=np.int32)
        return (len(row.ids) >= s.max_new_tokens or bool(np.isin(ids, s.stop_ids).any())
                or bool(_stopped(self.tokenizer, ids[None], s.stop, s.stop_ids)[0]))

    def _record(self, row: _Row) -> None:
        """The row's result, kept in its prompt's place and reported to `on_done`."""
        s = self.settings
        done = _finish(self.tokenizer, np.asarray(row.ids, dtype=np.int32), row.prompt_tokens,
                       s.max_new_tokens, s.stop, s.stop_ids)
        self.results[row.index] = done
        if self.on_done is not None:
            self.on_done(row.index, done)


def gemma_forward_cache(weights, layers, batch: int, size: int):
    """An empty decode cache for `batch` rows of `size` slots."""
    from models import gemma_forward

    return gemma_forward.init_cache(weights, layers, batch, size)


def _shared_levels(encoded: list[list[int]], bucket: int) -> list[list[int]]:
    """Per prompt, the starts (whole buckets) it shares with other prompts of the call, shortest first.

    In sorted order a prompt's common starts with the others are the ones with its two
    neighbours: for n samples of few-shot prompts, the worked examples it shares with other
    problems of its kind and the whole prompt it shares with its own other samples. Each
    level's cache is computed once and the next one extends it.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    levels: list[list[int]] = [[] for _ in encoded]
    for rank, i in enumerate(order):
        found = {min(_common_prefix([encoded[i], encoded[order[j]]]), len(encoded[i]) - 1) // bucket * bucket
                 for j in (rank - 1, rank + 1) if 0 <= j < len(order)}  # every row keeps a token of its own
        levels[i] = sorted(level for level in found if level > 0)
    return levels


def _length_bucket(n: int, bucket: int) -> int:
    """Tokens to pad a write of n to: whole buckets up to 4 of them, then whole blocks of 4 (few compiled shapes)."""
    return round_up(max(n, 1), bucket if n <= 4 * bucket else 4 * bucket)


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
    ids = _cut_ids(row[:max_new_tokens], stop_ids).tolist()
    ended = len(ids) < min(len(row), max_new_tokens)
    full = tokenizer.decode(ids)
    if any(s in full for s in stop):
        ended = True
        # The tokens it took to write the stop string: re-encoding the text would count others
        # (a byte-level piece that decodes to a replacement character re-encodes as three).
        ids = ids[: next(k for k in range(1, len(ids) + 1) if any(s in tokenizer.decode(ids[:k]) for s in stop))]
    return Generated(text=cut_at_stop(full, stop), finish_reason="stop" if ended else "length",
                     prompt_tokens=prompt_tokens, completion_tokens=len(ids), ids=tuple(ids))
