"""The GRPO stage on the tiny student: a fresh LoRA on the SFT-merged student moves, its reference is that
merged student (KL zero at step 0, one copy of the weights), long prompts are counted, the export reloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from machinery import store
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


def test_grpo_trains_a_fresh_lora_of_the_sft_adapters_shape(grpo_run):
    run, _, manifest = grpo_run
    warmed, _ = lora.read(run / "sft" / lora.ADAPTER)
    trained, _ = lora.read(run / "grpo" / lora.ADAPTER)
    assert trained.keys() == warmed.keys()
    assert all(trained[k].any() for k in trained if k.endswith("lora_b"))  # B started at zero and moved
    assert not any(np.array_equal(trained[k], warmed[k]) for k in trained)  # its own matrices, not the SFT ones
    stats = json.loads((run / "grpo" / "stats.json").read_text())
    assert stats["steps"] == 2 and len(stats["mean_reward"]) == 2
    kept = pl.read_parquet(run / "grpo" / "data.parquet")["prompt_tokens"]
    # Rollouts and updates pad prompts to the longest kept one (rounded up), not to max_prompt_length 384.
    assert stats["prompt_width"] == grpo.prompt_width(kept, 384) and kept.max() <= stats["prompt_width"] < 384
    metrics = pl.read_parquet(run / "grpo" / "metrics.parquet")
    assert metrics["step"].to_list() == [1, 2]
    assert metrics["kl"][0] == pytest.approx(0.0, abs=1e-6)  # step 1 is computed at the reference itself
    assert {lora.ADAPTER, *grpo.MODEL_FILES} <= set(manifest.outputs)


def test_prompt_width_is_the_longest_prompt_rounded_up_within_the_limit():
    assert grpo.prompt_width(pl.Series([61, 73, 72]), 256) == 96
    assert grpo.prompt_width(pl.Series([64]), 256) == 64
    assert grpo.prompt_width(pl.Series([250]), 256) == 256  # 256 is both the round-up and the limit
    assert grpo.prompt_width(pl.Series([230]), 240) == 240  # never past the limit that rejected longer ones


def test_prompts_too_long_are_rejected_and_counted(grpo_run):
    run, _, manifest = grpo_run
    rejected = pl.read_parquet(run / "grpo" / "rejected.parquet")
    assert rejected["reject_reason"].to_list() == ["prompt_too_long", "prompt_too_long"]
    assert manifest.counts == {"rows_in": 6, "kept": 4, "rejected": 2}  # the train split only


def _logits_fn(tokenizer):
    import jax.numpy as jnp
    from flax import nnx

    tokens = jnp.asarray([[2, *tokenizer.encode("What is 2 + 5?")]], dtype=jnp.int32)
    length = tokens.shape[1]
    positions = jnp.arange(length)[None]
    attention = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None]

    @nnx.jit
    def logits(model):
        return model(tokens, positions, None, attention)[0]

    return logits


def test_exported_models_reload_with_the_stacked_adapters_logits(grpo_run):
    """grpo/model = base + SFT + GRPO; sft/model = base + SFT: each reloads with the trained student's logits."""
    run, config, _ = grpo_run
    for stage in ("sft", "grpo"):
        student = lora.load_student(run, stage, config)
        exported = registry.load(str(run / stage / grpo.MODEL_DIR))
        logits = _logits_fn(exported.tokenizer)
        np.testing.assert_allclose(logits(student.model), logits(exported.model), atol=1e-4)
    base = registry.load(config.student.model, seed=config.seed)
    sft_model = registry.load(str(run / "sft" / grpo.MODEL_DIR))
    assert not np.allclose(logits(base.model), logits(exported.model), atol=1e-4)
    assert not np.allclose(logits(sft_model.model), logits(exported.model), atol=1e-4)  # GRPO moved it further


def test_actor_and_reference_start_as_the_merged_sft_model_on_one_copy_of_the_weights(grpo_run, caplog):
    """At step 0 both give the SFT-merged student's logits; the reference is its weights, shared with the actor
    when RLCluster starts (no warning, nothing re-placed) and still after GRPO updates."""
    from tunix.rl import utils as rl_utils

    from training import mesh

    run, config, _ = grpo_run
    device_mesh = mesh.create(config.mesh)
    loaded = sft.load_student(config, device_mesh)
    actor, reference = grpo.policies(loaded, run / "sft" / lora.ADAPTER, config)
    assert rl_utils.is_sharing_backbone(reference, actor)  # the same arrays: one copy
    with caplog.at_level("INFO"):
        cluster = grpo._cluster(actor, reference, loaded, config, run / "grpo" / "probe", device_mesh, 64)
    assert cluster.inference_worker.get_model("reference") is reference and cluster.actor_trainer.model is actor
    assert "do not share the same backbone" not in caplog.text and "Resharding" not in caplog.text
    merged = lora.load_student(run, "sft", config).model
    logits = _logits_fn(loaded.tokenizer)
    np.testing.assert_allclose(logits(actor), logits(merged), atol=1e-5)
    np.testing.assert_allclose(logits(reference), logits(merged), atol=1e-5)
    assert not np.allclose(logits(loaded.model), logits(merged), atol=1e-4)  # SFT did change the student

    # A jitted step hands back new buffers for every weight; the actor takes the reference's back after each.
    actor, reference = grpo.policies(loaded, run / "sft" / lora.ADAPTER, config)
    kept = grpo.prompt_lengths(store.finished(run, "build").read().filter(pl.col("split") == "train").head(1),
                               loaded.tokenizer)
    one_step = config.model_copy(update={"grpo": config.grpo.model_copy(update={"steps": 1})})
    trained, _ = grpo.train(loaded, actor, reference, kept, run / "grpo-one-step", one_step, key="one", force=False,
                            reward_fns=[length_reward], device_mesh=device_mesh)
    assert trained is actor and rl_utils.is_sharing_backbone(reference, trained)
    rows = sft.MetricsLog(run / "grpo-one-step" / sft.METRICS_LOG, []).rows()
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_empty_grpo_set_leaves_the_sft_policy(tmp_path, caplog):
    from safetensors.numpy import load_file

    run = runs.make_run(tmp_path, n_train=0, n_val=2, long_problems=0)
    config = runs.config("sft.steps=1", "grpo.steps=3")
    sft.run(run, config)
    manifest = grpo.run(run, config, reward_fns=[length_reward])
    assert manifest.counts == {"rows_in": 0, "kept": 0, "rejected": 0} and "no training prompts" in caplog.text
    assert json.loads((run / "grpo" / "stats.json").read_text())["steps"] == 0
    identity, _ = lora.read(run / "grpo" / lora.ADAPTER)
    assert not any(v.any() for k, v in identity.items() if k.endswith("lora_b"))  # B = 0: the identity
    grpo_weights = load_file(str(run / "grpo" / grpo.MODEL_DIR / "model.safetensors"))
    sft_weights = load_file(str(run / "sft" / grpo.MODEL_DIR / "model.safetensors"))
    assert grpo_weights.keys() == sft_weights.keys()
    assert all(np.array_equal(grpo_weights[k], sft_weights[k]) for k in grpo_weights)
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

    def die_after_step_2(self, step, kl=None):
        original(self, step, kl)
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
