"""Every Tunix family end to end: a small random model under a Hub-style id, offline, through SFT, GRPO, export.

For Gemma 3, Qwen 2.5, Qwen 3 and Llama 3: the model is put in a temporary Hugging Face
cache as `test-org/tiny-<family>` and named by that id with HF_HUB_OFFLINE=1; 3 SFT steps
and 2 GRPO steps run on the build set made in its own chat template; the exported
`grpo/model/` reloads and gives the trained student's logits. Slow: about a minute per family.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import polars as pl
import pytest

from models import registry
from tests.support import hf_models
from tests.training import runs
from tests.training.test_grpo import length_reward
from training import grpo, lora, sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    for family in hf_models.FAMILIES:
        hf_models.install(cache, f"test-org/tiny-{family}", family)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        yield cache


@pytest.mark.parametrize("family", tuple(hf_models.FAMILIES))
def test_a_hub_family_trains_sft_and_grpo_and_exports_what_it_trained(hub, family, tmp_path, caplog):
    import jax.numpy as jnp

    student = f"test-org/tiny-{family}"
    started = time.perf_counter()
    loaded = registry.load(student)
    load_seconds = time.perf_counter() - started
    run = runs.make_run(tmp_path, n_train=4, n_val=1, student=student)
    config = runs.config("sft.steps=3", "sft.learning_rate=1e-2", "grpo.steps=2", "grpo.max_new_tokens=8",
                         "grpo.learning_rate=1e-2", "grpo.checkpoint_every=2", "sft.checkpoint_every=3",
                         student=student)
    with caplog.at_level(logging.INFO):
        sft_manifest = sft.run(run, config)
        grpo_manifest = grpo.run(run, config, reward_fns=[length_reward])
    commit = loaded.revision
    assert sft_manifest.inputs["student"] == grpo_manifest.inputs["student"] == f"{student}@{commit}"
    metrics = pl.read_parquet(run / "sft" / "metrics.parquet").filter(pl.col("loss").is_not_null())
    assert metrics["step"].to_list() == [1, 2, 3] and metrics["loss"].is_finite().all()
    assert json.loads((run / "grpo" / "stats.json").read_text())["steps"] == 2
    if family != "gemma3":  # the fast loop runs Gemma 3 only: rollouts fall back to Tunix's vanilla engine
        assert "rolling out with vanilla" in caplog.text
    assert "do not share the same backbone" not in caplog.text and "Resharding model" not in caplog.text

    trained = lora.load_student(run, "grpo", config)
    exported = registry.load(str(run / "grpo" / "model"))
    assert exported.family == family
    ids = [*(loaded.tokenizer.encode(runs.problems(1)[0][0]))]
    length = len(ids)
    call = (jnp.asarray([ids], dtype=jnp.int32), jnp.arange(length)[None], None,
            jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None])
    ours = np.asarray(trained.model(*call)[0], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(exported.model(*call)[0], dtype=np.float32), ours, atol=1e-4)
    assert not np.allclose(np.asarray(loaded.model(*call)[0], dtype=np.float32), ours, atol=1e-3)  # it trained
    step_seconds = metrics["seconds"].to_list()
    print(f"\n{family}: load {load_seconds:.2f} s; SFT step seconds {[round(s, 2) for s in step_seconds]} "
          f"(first includes compiling)")
