"""The GRPO stage on the tiny student: LoRA weights move, long prompts are counted, the export reloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curation import store
from models import registry
from tests.training import runs
from training import grpo, lora, sft


def length_reward(prompts, completions, **kwargs):
    """A reward that varies on a random model's output, so advantages are non-zero (the real ones give 0)."""
    assert len(kwargs["gold"]) == len(kwargs["source"]) == len(completions)
    return [float(len(c) % 3) for c in completions]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    run = runs.make_run(tmp_path_factory.mktemp("grpo"), n_train=4, n_val=1, long_problems=2)
    config = runs.config("sft.steps=2", "grpo.steps=2", "grpo.max_new_tokens=16", "grpo.learning_rate=1e-2",
                         "grpo.checkpoint_every=1")
    sft.run(run, config)
    return run, config, grpo.run(run, config, reward_fns=[length_reward])


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
    lora_model = lora.load_into(registry.load(config.student.model, seed=config.seed).model,
                                run / "grpo" / lora.ADAPTER, config=config.sft.lora)
    exported = registry.load(str(run / "grpo" / grpo.MODEL_DIR))
    tokens = jnp.asarray([[2, *exported.tokenizer.encode("What is 2 + 5?")]], dtype=jnp.int32)
    length = tokens.shape[1]
    positions = jnp.arange(length)[None]
    attention = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None]

    @nnx.jit
    def logits(model):
        return model(tokens, positions, None, attention)[0]

    assert np.allclose(logits(lora_model), logits(exported.model), atol=1e-4)
    base = registry.load(config.student.model, seed=config.seed)
    assert not np.allclose(logits(base.model), logits(exported.model), atol=1e-4)


def test_empty_grpo_set_keeps_the_sft_adapter(tmp_path, caplog):
    run = runs.make_run(tmp_path, n_train=0, n_val=2, long_problems=0)
    config = runs.config("sft.steps=1", "grpo.steps=3")
    sft.run(run, config)
    manifest = grpo.run(run, config, reward_fns=[length_reward])
    assert manifest.counts == {"rows_in": 0, "kept": 0, "rejected": 0} and "no training prompts" in caplog.text
    assert json.loads((run / "grpo" / "stats.json").read_text())["steps"] == 0
    kept, _ = lora.read(run / "grpo" / lora.ADAPTER)
    warmed, _ = lora.read(run / "sft" / lora.ADAPTER)
    assert kept.keys() == warmed.keys() and all(np.array_equal(kept[k], warmed[k]) for k in kept)
    assert store.complete_manifest(run / "grpo") is not None


def test_rewards_judge_a_rollout_as_if_it_had_stopped_at_the_answer():
    """Tunix's rollout stops on token ids only; text after `</answer>` must not cost the format reward."""
    from training import rewards

    [summed] = grpo._StepRecorder(sft.MetricsLog(Path("unused"), []), registry.load("tiny-gemma3").tokenizer).wrap(
        rewards.reward_fns())
    clean = "<reasoning>2 + 3 = 5</reasoning><answer>5</answer>"
    kwargs = {"gold": ["5", "5"], "source": ["openai/gsm8k", "openai/gsm8k"]}
    assert summed(["p", "p"], [clean, clean + "eleSp\n</reasoning>eleSp"], **kwargs) == [2.0, 2.0]


def test_killed_grpo_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """GRPO killed after its step-2 update resumes from a checkpoint; every step is recorded once."""
    run = runs.make_run(tmp_path, n_train=4, n_val=1)
    config = runs.config("sft.steps=1", "grpo.steps=4", "grpo.max_new_tokens=8", "grpo.checkpoint_every=1")
    sft.run(run, config)
    original = grpo._StepRecorder.step_done

    def die_after_step_2(self, step):
        original(self, step)
        if step == 2:
            raise KeyboardInterrupt("killed after step 2")

    with monkeypatch.context() as patch:
        patch.setattr(grpo._StepRecorder, "step_done", die_after_step_2)
        with pytest.raises(KeyboardInterrupt):
            grpo.run(run, config, reward_fns=[length_reward])
    assert store.complete_manifest(run / "grpo") is None

    grpo.run(run, config, reward_fns=[length_reward])
    stats = json.loads((run / "grpo" / "stats.json").read_text())
    assert stats["resumed_from"] in (1, 2) and stats["steps"] == 4
    assert pl.read_parquet(run / "grpo" / "metrics.parquet")["step"].to_list() == [1, 2, 3, 4]
