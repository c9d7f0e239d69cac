"""Hugging Face models of every Tunix family by Hub id, offline, from a temporary Hub cache."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from models import chat, hf, registry, rope, sampling
from models.decode import Decoder
from tests.support import hf_models

FAMILIES = tuple(hf_models.FAMILIES)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache holding `test-org/tiny-<family>` for every family; offline while the module runs."""
    cache = tmp_path_factory.mktemp("hf-cache")
    for family in FAMILIES:
        hf_models.install(cache, f"test-org/tiny-{family}", family)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        yield cache


@pytest.fixture(scope="module")
def loaded(hub):
    return {family: registry.load(f"test-org/tiny-{family}") for family in FAMILIES}


def _logits(model, ids: list[int]) -> np.ndarray:
    import jax.numpy as jnp

    tokens = jnp.asarray([ids], dtype=jnp.int32)
    positions = jnp.arange(len(ids))[None]
    mask = jnp.tril(jnp.ones((len(ids), len(ids)), dtype=jnp.bool_))[None]
    return np.asarray(model(tokens, positions, None, mask)[0][0], dtype=np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hub_id_loads_offline_with_its_weights_commit_and_family(hub, loaded, family):
    from safetensors.numpy import load_file

    model = loaded[family]
    folder = hub / f"models--test-org--tiny-{family}" / "snapshots"
    commit = next(folder.iterdir()).name
    assert (model.family, model.hub_id, model.revision) == (family, f"test-org/tiny-{family}", commit)
    assert model.source == f"test-org/tiny-{family}@{commit}"
    written = load_file(str(folder / commit / "model.safetensors"))
    assert np.array_equal(np.asarray(model.model.embedder.input_embedding[...]),
                          written["model.embed_tokens.weight"])
    logits = _logits(model.model, [5, 17, 99, 3, 42])
    assert logits.shape == (5, hf_models.VOCAB) and np.isfinite(logits).all() and logits.std() > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_and_tokens_are_transformers_own(loaded, family):
    """Our prompt, end of turn and token ids equal what transformers' tokenizer makes of the same folder."""
    tokenizer = hf.transformers_module().AutoTokenizer.from_pretrained(str(loaded[family].folder))
    model = loaded[family]
    user = "What is 2 + 2?\n\nThink  step by step: café."
    expected = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    assert bos + model.chat.prompt(user) == expected
    assert model.tokenizer.encode(expected) == tokenizer.encode(expected, add_special_tokens=False)
    assert model.tokenizer.decode(model.tokenizer.encode(expected)) == expected
    ends = {"qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "gemma3": "<end_of_turn>"}
    assert model.chat.end_of_turn == ends[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_ids_are_generation_configs_and_the_end_of_turn(loaded, family):
    model = loaded[family]
    generation = json.loads((model.folder / "generation_config.json").read_text())["eos_token_id"]
    end = model.tokenizer.piece_to_id(model.chat.end_of_turn)
    assert set(model.stop_ids) == {model.tokenizer.eos_id(), *generation, end}


def test_no_bos_for_qwen_and_one_for_llama_and_gemma(loaded):
    assert loaded["qwen2"].tokenizer.bos_id() is None and loaded["qwen3"].tokenizer.bos_id() is None
    assert loaded["llama3"].tokenizer.id_to_piece(loaded["llama3"].tokenizer.bos_id()) == "<|begin_of_text|>"
    # Llama 3 has no pad token: a reserved token that never occurs in text, not <|eot_id|>
    assert loaded["llama3"].tokenizer.id_to_piece(loaded["llama3"].tokenizer.pad_id()) == "<|finetune_right_pad_id|>"


def test_a_model_missing_offline_is_one_line_naming_the_download_command(hub):
    with pytest.raises(hf.ModelNotFoundError) as caught:
        registry.load("google/gemma-3-1b-it")
    message = str(caught.value)
    assert "\n" not in message and "'google/gemma-3-1b-it'" in message
    assert "hf download google/gemma-3-1b-it" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(hf.ModelNotFoundError, match="not a registry name, a folder, or a Hub id"):
        registry.load("gemma3-1b")


def test_what_tunix_cannot_run_is_refused_naming_the_field(tmp_path):
    folder = hf_models.write("qwen2", tmp_path / "yarn")
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.UnsupportedModelError, match="rope_type 'yarn'"):
        registry.load(str(folder))
    folder = hf_models.write("gemma3", tmp_path / "softcap")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    with pytest.raises(hf.UnsupportedModelError, match="final_logit_softcapping=30.0"):
        registry.load(str(folder))


def _hf_llama3_inv_freq(head_dim, theta, factor, low, high, original):
    """transformers' `_compute_llama3_parameters` (modeling_rope_utils.py), transcribed with NumPy."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv
    inv_l = np.where(wavelen > original / low, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return np.where(medium, smoothed, inv_l)


def test_llama3_rope_scaling_has_transformers_frequencies():
    """Llama 3.2 1B's rope (theta 5e5, factor 32) at its head_dim 64: the same angles as transformers."""
    found = rope.Rope.from_parameters({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192}, "test")
    expected = _hf_llama3_inv_freq(64, 500000.0, 32.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(found.inverse_frequencies(64), expected, rtol=1e-12)
    assert not np.allclose(expected, 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64))  # the scaling does matter


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_tunix_llama3_and_qwen3_rotate_with_the_configs_rope(loaded, family):
    """Tunix's own attention ignores rope_theta and scaling; the fixed model gives other logits, the
    same as Tunix's when the rope is Tunix's hard-coded one, and other models stay Tunix's."""
    import dataclasses

    model = loaded[family].model
    fixed = model.layers[0].attn._rope
    assert fixed.theta == hf_models.FAMILIES[family].config["rope_theta"]
    ids = list(range(3, 40))  # positions far enough for long wavelengths to turn
    ours = _logits(model, ids)
    for layer in model.layers:
        layer.attn._rope = rope.Rope(theta=1_000_000.0)  # Tunix's hard-coded rotation
    try:
        as_tunix = _logits(model, ids)
    finally:
        for layer in model.layers:
            layer.attn._rope = fixed
    assert not np.allclose(ours, as_tunix, atol=1e-3)
    plain = type(model)(dataclasses.replace(loaded[family].config) if family == "llama3" else loaded[family].config,
                        rngs=__import__("flax").nnx.Rngs(0))
    from flax import nnx

    nnx.update(plain, nnx.state(model))  # Tunix's own class, the same weights, never fixed
    np.testing.assert_allclose(_logits(plain, ids), as_tunix, rtol=1e-5, atol=1e-5)


def test_the_sampler_fallback_decodes_as_the_fast_loop_greedily():
    tiny = registry.load(registry.TINY)
    prompts = ["abc", "a longer prompt that pads the first", "x"]
    fast = Decoder(tiny.model, tiny.tokenizer).generate(prompts, max_new_tokens=12, temperature=0.0)
    done = []
    slow = sampling.SamplerDecoder(tiny.model, tiny.tokenizer).generate(
        prompts, max_new_tokens=12, temperature=0.0, slots=2, on_done=lambda i, g: done.append(i))
    assert [g.ids for g in slow] == [g.ids for g in fast] and [g.text for g in slow] == [g.text for g in fast]
    assert [g.finish_reason for g in slow] == [g.finish_reason for g in fast] and sorted(done) == [0, 1, 2]
    stop = fast[0].text[2]
    cut = sampling.SamplerDecoder(tiny.model, tiny.tokenizer).generate(prompts[:1], max_new_tokens=12,
                                                                      temperature=0.0, stop=(stop,))[0]
    assert cut.text == fast[0].text[: fast[0].text.index(stop) + 1] and cut.finish_reason == "stop"


def test_families_the_fast_loop_does_not_run_fall_back_with_one_log_line(loaded, caplog):
    with caplog.at_level(logging.INFO, logger="models.sampling"):
        assert isinstance(sampling.make_decoder(loaded["qwen2"]), sampling.SamplerDecoder)
        assert isinstance(sampling.make_decoder(loaded["gemma3"]), Decoder)
    lines = [r.getMessage() for r in caplog.records if r.name == "models.sampling"]
    assert len(lines) == 1 and "qwen2" in lines[0] and "Sampler" in lines[0]


def test_builtin_gemma_turns_are_the_classic_student_prompt():
    assert chat.gemma().prompt("Solve it.") == "<start_of_turn>user\nSolve it.<end_of_turn>\n<start_of_turn>model\n"
    assert chat.gemma().end_of_turn == "<end_of_turn>"


def test_a_model_whose_weights_were_never_fetched_names_the_download_command(tmp_path, monkeypatch):
    """The build stage fetches only tokenizer files; training offline on such a cache says what is missing."""
    folder = hf_models.install(tmp_path, "test-org/half", "qwen2")
    (folder / "model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.chat_template("test-org/half").end_of_turn == "<|im_end|>"  # tokenizer files suffice here
    with pytest.raises(hf.ModelNotFoundError, match=r"only partly in the Hugging Face cache .*hf download test-org/half"):
        registry.load("test-org/half")


def test_a_hub_teacher_writes_traces_through_the_sampler_fallback(loaded, hub):
    """teacher.backend=tunix with a Hub id: the same Teacher protocol, decoded by Tunix's Sampler for Qwen."""
    from curation import generate
    from curation.teacher import SamplingParams, prompts
    from machinery.config import TeacherConfig

    teacher = generate.make_teacher(TeacherConfig(backend="tunix", model="test-org/tiny-qwen2", concurrency=4), None)
    assert isinstance(teacher.decoder, sampling.SamplerDecoder)
    built = [prompts.build(f"What is {i} + 2?", "procedural/basic_arithmetic") for i in range(3)]
    out = teacher.generate(built, SamplingParams(n=2, max_new_tokens=6))
    assert [(c.prompt_idx, c.sample_idx) for c in out] == [(p, s) for p in range(3) for s in range(2)]
    assert all(c.error is None and 1 <= c.completion_tokens <= 6 for c in out)
