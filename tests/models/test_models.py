"""The model registry, the GGUF conversion and the decode loop, on tiny models (seconds each)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import decode, files, gguf_import, likelihood, registry

BYTES = [f"<0x{b:02X}>" for b in range(256)]  # byte fallback needs all 256
VOCAB = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "  ", "\u2581a", "b", "ab", *BYTES]


def write_tiny_gguf(path, norm_value: float = 1.5) -> dict[str, np.ndarray]:
    """A one-block Gemma 3 GGUF with F32 tensors; returns the tensors as written (llama.cpp layout)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_key_length(4)
    writer.add_sliding_window(16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(VOCAB)
    writer.add_token_scores([0.0] * 6 + [-1.0, -2.0, -3.0, -4.0] + [0.0] * 256)
    writer.add_token_types([3, 3, 3, 2, 3, 3, 1, 1, 1, 1] + [6] * 256)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(3)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(VOCAB), 8), "output_norm.weight": (8,), "blk.0.attn_q.weight": (8, 8),
              "blk.0.attn_k.weight": (4, 8), "blk.0.attn_v.weight": (4, 8), "blk.0.attn_output.weight": (8, 8),
              "blk.0.attn_q_norm.weight": (4,), "blk.0.attn_k_norm.weight": (4,), "blk.0.attn_norm.weight": (8,),
              "blk.0.post_attention_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,),
              "blk.0.post_ffw_norm.weight": (8,), "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8),
              "blk.0.ffn_down.weight": (8, 16)}
    tensors = {name: (np.full(shape, norm_value, np.float32) if len(shape) == 1
                      else rng.standard_normal(shape).astype(np.float32)) for name, shape in shapes.items()}
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_gguf_tensors_get_hf_names_shapes_and_norms_shifted_back(tmp_path):
    from gguf import GGUFReader

    written = write_tiny_gguf(tmp_path / "tiny.gguf")
    tensors = gguf_import.read_tensors(GGUFReader(str(tmp_path / "tiny.gguf")))
    assert np.array_equal(tensors["model.layers.0.self_attn.q_proj.weight"], written["blk.0.attn_q.weight"])
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (8, 16)  # (out, in), as Hugging Face
    # llama.cpp stores Gemma's RMSNorm weights as 1 + w
    assert np.allclose(tensors["model.layers.0.pre_feedforward_layernorm.weight"], 0.5)
    assert np.allclose(tensors["model.norm.weight"], 0.5)
    assert np.array_equal(tensors["model.embed_tokens.weight"], written["token_embd.weight"])


def test_unknown_tensor_name_is_an_error():
    with pytest.raises(KeyError, match="blk.0.mystery"):
        gguf_import.hf_name("blk.0.mystery.weight")


def test_tokenizer_from_gguf_keeps_ids_specials_and_whitespace_pieces(tmp_path):
    from gguf import GGUFReader

    write_tiny_gguf(tmp_path / "tiny.gguf")
    sp = registry.sentencepiece(gguf_import.tokenizer_proto(GGUFReader(str(tmp_path / "tiny.gguf"))))
    assert (sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id()) == (2, 1, 0, 3)
    assert sp.id_to_piece(6) == "\u2581\u2581"  # a run of spaces is written with U+2581
    assert sp.encode("<start_of_turn>") == [4]  # user-defined, kept whole


def test_partial_or_corrupted_conversion_cache_is_rebuilt(tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    converted = []

    def convert(src, out):
        converted.append(out)
        gguf_import.convert(src, out)

    def conversion():
        return registry.converted_embedded(gguf_path, convert)

    folder = conversion()
    assert conversion() == folder and len(converted) == 1  # cached
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # truncated
    conversion()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, flipped bits
    weights.write_bytes(bytes(data))
    conversion()
    (folder / "tokenizer.model").unlink()  # a file missing
    conversion()
    assert len(converted) == 4
    assert json.loads((folder / "conversion.json").read_text())["source_sha256"] == files.sha256(gguf_path)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.fixture(scope="module")
def tiny():
    return registry.load(registry.TINY, seed=0)


def test_tiny_model_and_tokenizer_round_trip(tiny):
    text = "Tom has 3 apples.\n  $\\frac{1}{2}$ ünïcode"
    assert tiny.tokenizer.decode(tiny.tokenizer.encode(text)) == text
    nll = likelihood.token_nll(tiny, ["hello world", "a much longer sentence than the first one"])
    assert [len(n) for n in nll] == [len(tiny.tokenizer.encode(t)) for t in ("hello world",
                                                                             "a much longer sentence than the first one")]
    assert 1 < likelihood.perplexity(nll) < 1000  # a random model: near the vocabulary size, finite


def test_greedy_decoding_is_deterministic_and_batch_independent(tiny):
    decoder = decode.Decoder(tiny.model, tiny.tokenizer)
    alone = decoder.generate(["abc"], max_new_tokens=12, temperature=0.0)
    batched = decoder.generate(["abc", "a longer prompt that pads the first"], max_new_tokens=12, temperature=0.0)
    assert alone[0].text == batched[0].text  # left padding does not change the continuation
    assert alone[0].completion_tokens <= 12


def test_a_shared_prompt_start_is_computed_once_with_the_same_result(tiny):
    decoder = decode.Decoder(tiny.model, tiny.tokenizer)
    start = "Solve each problem. Example: 2 + 2 = 4. Example: 3 * 3 = 9. Example: 10 - 7 = 3.\nProblem: "
    prompts = [start + "1 + 1", start + "what is 12 * 12", start + "7 - 5"]
    batched = decoder.generate(prompts, max_new_tokens=12, temperature=0.0)
    assert decoder.shared_starts == [64] * 3  # 86 common tokens (BOS + bytes), in whole buckets of 32
    alone = [decoder.generate([p], max_new_tokens=12, temperature=0.0)[0] for p in prompts]
    assert decoder.shared_starts == [0]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.prompt_tokens for g in batched] == [len(tiny.tokenizer.encode(p)) + 1 for p in prompts]


def test_sampling_respects_seed_length_and_stop_strings(tiny):
    decoder = decode.Decoder(tiny.model, tiny.tokenizer)
    first = decoder.generate(["xyz"] * 4, max_new_tokens=16, temperature=1.0, seed=3)
    again = decoder.generate(["xyz"] * 4, max_new_tokens=16, temperature=1.0, seed=3)
    assert [g.text for g in first] == [g.text for g in again]
    assert len({g.text for g in first}) > 1  # rows are sampled independently
    for g in first:
        assert g.finish_reason in ("stop", "length") and g.completion_tokens <= 16
    # any character the model emits can serve as a stop string: the text ends right after it
    stop = first[0].text[:1]
    cut = decoder.generate(["xyz"], max_new_tokens=16, temperature=1.0, seed=3, stop=(stop,))[0]
    assert cut.text.endswith(stop) and cut.text.count(stop) == 1 and cut.finish_reason == "stop"


def random_gemma3(heads: int, kv_heads: int, *, layers: int = 6, window: int = 8, seed: int = 0):
    """A small Gemma 3 with every weight random (Tunix zero-initialises norms and MLPs)."""
    import dataclasses

    import jax
    from flax import nnx
    from tunix.models.gemma3 import model as gemma3

    config = dataclasses.replace(registry.tiny_config(), num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                                 sliding_window_size=window)
    model = gemma3.Gemma3(config, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape, x.dtype)
                                                   for k, x in zip(keys, leaves)]))
    return model


@pytest.mark.parametrize("heads,kv_heads", [(2, 1), (2, 2), (4, 2)])
def test_gemma_forward_gives_tunix_logits_through_prefill_and_steps(heads, kv_heads):
    """Left padding, grouped/shared/one kv heads, local windows and a global layer: same logits as Tunix."""
    import jax.numpy as jnp

    from models import gemma_forward as gemma

    model = random_gemma3(heads, kv_heads)  # 6 layers: 5 with an 8-token window, then a global one
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, (3, 20)).astype(np.int32)
    tokens[1, :3] = tokens[2, :7] = 0  # left padding
    valid = tokens != 0
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    mask = valid[:, None, :] & np.tril(np.ones((20, 20), bool))[None]
    expected, _ = model(jnp.asarray(tokens), jnp.asarray(positions), None, jnp.asarray(mask))

    weights, layers = gemma.prepare(model)
    cache = gemma.init_cache(weights, layers, 3, 24)
    slots = jnp.asarray(np.pad(valid, ((0, 0), (0, 4)), constant_values=True))
    hidden, cache = gemma.forward(weights, layers, jnp.asarray(tokens[:, :12]), jnp.asarray(positions[:, :12]), cache,
                                  slots, 0)
    got = [gemma.logits(weights, hidden)]
    for t in range(12, 20):  # one token per step, past the window
        hidden, cache = gemma.forward(weights, layers, jnp.asarray(tokens[:, t : t + 1]),
                                      jnp.asarray(positions[:, t : t + 1]), cache, slots, t)
        got.append(gemma.logits(weights, hidden))
    got = np.concatenate([np.asarray(g) for g in got], axis=1)
    expected = np.asarray(expected)
    assert np.abs(expected).max() > 1  # the comparison is not between near-zero outputs
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-4, atol=1e-4)


def test_decoder_runs_gemma3_models_only():
    with pytest.raises(TypeError, match="Gemma 3"):
        decode.Decoder(object(), None)


def test_tunix_teacher_samples_n_per_prompt_and_resumes_from_cache(tiny, tmp_path):
    from curation.teacher import SamplingParams, prompts
    from curation.teacher.cache import RequestCache
    from curation.teacher.tunix_local import TunixTeacher

    built = [prompts.build(f"What is {i} + 2?", "procedural/basic_arithmetic") for i in range(3)]
    cache = RequestCache(tmp_path / "requests.jsonl")
    teacher = TunixTeacher(tiny, batch_size=4, cache=cache, progress=False)
    out = teacher.generate(built, SamplingParams(n=2, max_new_tokens=8))
    cache.close()
    assert [(c.prompt_idx, c.sample_idx) for c in out] == [(p, s) for p in range(3) for s in range(2)]
    assert all(c.text.startswith("<reasoning>\n") and c.error is None for c in out)
    assert teacher.requests_sent == 1  # one continuous-batching call for all 6 samples
    resumed = TunixTeacher(tiny, batch_size=4, cache=RequestCache(tmp_path / "requests.jsonl"), progress=False)
    again = resumed.generate(built, SamplingParams(n=2, max_new_tokens=8))
    assert resumed.requests_sent == 0 and [c.text for c in again] == [c.text for c in out]


def test_tunix_teacher_shares_each_few_shot_header_among_its_prompts(tiny):
    from curation.teacher import SamplingParams, prompts
    from curation.teacher.tunix_local import TunixTeacher

    kinds = ["procedural/basic_arithmetic", "procedural/gsm_symbolic"]  # different worked examples
    base = {kind: len(prompts.build("", kind).text) for kind in kinds}
    # Problem lengths chosen so that sorting by prompt length alone would alternate the kinds.
    built = [prompts.build("x" * (1000 + i - base[kinds[i % 2]]), kinds[i % 2]) for i in range(4)]
    header = min(base.values()) - len("Problem: ")  # roughly; the exact cut does not matter
    teacher = TunixTeacher(tiny, batch_size=2, progress=False)
    teacher.generate(built, SamplingParams(n=1, max_new_tokens=4))
    # Each prompt shares its own kind's worked examples, not only the system prompt (~200 bytes).
    shared = teacher.decoder.shared_starts
    assert len(shared) == 4 and min(shared) > header - 64


def test_two_pass_top_k_equals_lax_top_k():
    import jax
    import jax.numpy as jnp

    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 70_000))
    values, indices = decode.top_k(logits, 64, block=512)
    expected_values, expected_indices = jax.lax.top_k(logits, 64)
    assert jnp.array_equal(values, expected_values) and jnp.array_equal(indices, expected_indices)


def test_continuous_batching_gives_every_prompt_its_text_alone(tiny):
    """Fewer slots than prompts, rows ending at different steps: each refilled slot continues like a fresh call."""
    decoder = decode.Decoder(tiny.model, tiny.tokenizer)
    prompts = [f"Problem {i}: " + "abc " * (i * 3) for i in range(7)]  # seven prompt lengths
    free = [decoder.generate([p], max_new_tokens=20, temperature=0.0)[0].text for p in prompts]
    stop = free[0][2]  # a character some continuations reach early and others late or never
    alone = [decoder.generate([p], max_new_tokens=20, temperature=0.0, stop=(stop,))[0] for p in prompts]
    finished = []
    together = decoder.generate(prompts, max_new_tokens=20, temperature=0.0, stop=(stop,), slots=3,
                                on_done=lambda i, generated: finished.append((i, generated.text)))
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.completion_tokens for g in together] == [g.completion_tokens for g in alone]
    assert sorted(finished) == [(i, g.text) for i, g in enumerate(alone)]  # each reported once, as it ended
    assert len({g.completion_tokens for g in alone}) > 1  # the rows did end at different steps
