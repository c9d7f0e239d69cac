"""The distillery rollout engine: Tunix's BaseRollout over our decode loop, sampling the live LoRA actor."""

from __future__ import annotations

import numpy as np
import pytest

from machinery.config import LoraConfig
from models import registry
from models.decode import Decoder
from tests.training import runs
from training import grpo, lora, rollout


def _actor(seed: int = 0):
    """The tiny model with a LoRA whose B is random: an adapter that changes what the model says."""
    import jax.numpy as jnp

    loaded = registry.load(registry.TINY, seed=seed)
    config = LoraConfig(rank=2, alpha=4.0)
    actor = lora.apply(loaded.model, config, seed=seed)
    rng = np.random.default_rng(seed)
    lora.set_params(actor, {name: (rng.normal(0, 0.5, value.shape) if name.endswith("lora_b") else value)
                            .astype(np.float32) for name, value in lora.params(actor).items()})
    assert any(np.abs(v).sum() for k, v in lora.params(actor).items() if k.endswith("lora_b"))
    return loaded, actor, config, jnp


def test_the_engine_samples_the_actor_with_its_adapter_folded_in():
    from tunix.generate.tokenizer_adapter import TokenizerAdapter
    from tunix.rl.rollout.base_rollout import RolloutConfig

    loaded, actor, config, _ = _actor()
    adapter = TokenizerAdapter(loaded.tokenizer)
    engine = rollout.engine(lora_scale=config.alpha / config.rank)(rollout_actor=actor, tokenizer=adapter,
                                                                   rollout_config=None)
    prompts = ["What is 2 + 2?", "Name a prime."]
    settings = RolloutConfig(max_tokens_to_generate=10, max_prompt_length=32, temperature=0.0, top_k=64,
                             eos_tokens=[loaded.tokenizer.eos_id()])
    out = engine.generate(prompts, settings)
    merged = lora.fold(loaded.model, actor, config)  # the adapter folded in by the export's own code
    expected = Decoder(merged, loaded.tokenizer).generate(prompts, max_new_tokens=10, temperature=0.0)
    assert out.text == [g.text for g in expected]
    assert [t.tolist() for t in out.tokens] == [list(g.ids) for g in expected]
    base = Decoder(loaded.model, loaded.tokenizer).generate(prompts, max_new_tokens=10, temperature=0.0)
    assert [g.text for g in base] != out.text  # the adapter mattered
    padded = out.left_padded_prompt_tokens
    assert padded.shape == (2, 32) and (padded[:, -1] != 0).all()
    for row, prompt in zip(padded, prompts):
        ids = [loaded.tokenizer.bos_id(), *loaded.tokenizer.encode(prompt)]
        assert row[-len(ids):].tolist() == ids and not row[: 32 - len(ids)].any()  # BOS + prompt, left-padded
    assert engine.model() is actor  # Tunix sees shared weights: no sync copy


def test_an_engine_whose_package_is_absent_is_named_in_one_line():
    config = runs.config("grpo.rollout_engine=vllm")
    with pytest.raises(ModuleNotFoundError, match="grpo.rollout_engine=vllm needs the 'vllm' package"):
        grpo.rollout_engine(config)
    assert grpo.rollout_engine(runs.config("grpo.rollout_engine=vanilla")) == "vanilla"
