"""The GRPO stage on the tiny student: LoRA weights move, long prompts are counted, the export reloads."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import polars as pl
import pytest

from curation import store
from tests.training import runs
from training import grpo, lora, models, sft


def _stand_in_rewards() -> types.ModuleType:
    """training.rewards' contract (list of fn(prompts, completions, **kwargs)), until the real one lands."""
    module = types.ModuleType("training.rewards")

    def length_reward(prompts, completions, **kwargs):
        assert len(kwargs["gold"]) == len(kwargs["source"]) == len(completions)
        return [float(len(c) % 3) for c in completions]  # varies, so advantages are non-zero

    module.reward_fns = lambda: [length_reward]
    return module


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    run = runs.make_run(tmp_path_factory.mktemp("grpo"), n_train=4, n_val=1, long_problems=2)
    config = runs.config("sft.steps=2", "grpo.steps=2", "grpo.max_new_tokens=16", "grpo.learning_rate=1e-2",
                         "grpo.checkpoint_every=1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "training.rewards", _stand_in_rewards())
        sft.run(run, config)
        manifest = grpo.run(run, config)
    return run, config, manifest


def test_grpo_steps_change_the_lora_weights(grpo_run):
    run, _, manifest = grpo_run
    before, _ = lora.read(run / "sft" / lora.ADAPTER)
    after, _ = lora.read(run / "grpo" / lora.ADAPTER)
    assert any(not np.array_equal(before[name], after[name]) for name in before)
    stats = json.loads((run / "grpo" / "stats.json").read_text())
    assert stats["steps"] == 2 and len(stats["mean_reward"]) == 2
    assert pl.read_parquet(run / "grpo" / "metrics.parquet")["step"].to_list() == [1, 2]
    assert {lora.ADAPTER, *grpo.MODEL_FILES} <= set(manifest.outputs)


def test_prompts_too_long_are_rejected_and_counted(grpo_run):
    run, _, manifest = grpo_run
    rejected = pl.read_parquet(run / "grpo" / "rejected.parquet")
    assert rejected["reject_reason"].to_list() == ["prompt_too_long", "prompt_too_long"]
    assert manifest.counts == {"rows_in": 6, "kept": 4, "rejected": 2}  # the train split only


def test_exported_model_reloads_with_the_lora_models_logits(grpo_run):
    import jax.numpy as jnp
    from flax import nnx

    run, config, _ = grpo_run
    lora_model = lora.load_into(models.load(config.student.model, seed=config.seed).model,
                                run / "grpo" / lora.ADAPTER, config=config.sft.lora)
    exported = models.load(str(run / "grpo" / grpo.MODEL_DIR))
    tokens = jnp.asarray([[2, *exported.tokenizer.encode("What is 2 + 5?")]], dtype=jnp.int32)
    length = tokens.shape[1]
    positions = jnp.arange(length)[None]
    attention = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None]

    @nnx.jit
    def logits(model):
        return model(tokens, positions, None, attention)[0]

    assert np.allclose(logits(lora_model), logits(exported.model), atol=1e-4)
    base = models.load(config.student.model, seed=config.seed)
    assert not np.allclose(logits(base.model), logits(exported.model), atol=1e-4)


def test_empty_grpo_set_keeps_the_sft_adapter(tmp_path, caplog):
    run = runs.make_run(tmp_path, n_train=0, n_val=2, long_problems=0)
    config = runs.config("sft.steps=1", "grpo.steps=3")
    sft.run(run, config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "training.rewards", _stand_in_rewards())
        manifest = grpo.run(run, config)
    assert manifest.counts == {"rows_in": 0, "kept": 0, "rejected": 0} and "no training prompts" in caplog.text
    assert json.loads((run / "grpo" / "stats.json").read_text())["steps"] == 0
    kept, _ = lora.read(run / "grpo" / lora.ADAPTER)
    warmed, _ = lora.read(run / "sft" / lora.ADAPTER)
    assert kept.keys() == warmed.keys() and all(np.array_equal(kept[k], warmed[k]) for k in kept)
    assert store.complete_manifest(run / "grpo") is not None
