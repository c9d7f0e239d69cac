"""Training on a device mesh: 8 fake CPU devices as fsdp 4 x tp 2, against the same run on one device.

Each run is a subprocess (XLA's device count is fixed when JAX starts): a Gemma 3 in the
Hugging Face layout under a Hub-style id in a temporary cache, offline. On the mesh its large
weights are spread over devices from the moment they are read, Tunix never re-places a model,
SFT gives the one-device losses, and GRPO runs 2 steps. Slow: two JAX processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import hf_models

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STUDENT = "test-org/tiny-gemma3"
SETS = ["sft.steps=4", "sft.batch_size=4", "sft.learning_rate=1e-2", "sft.eval_every=100",
        "sft.checkpoint_every=100", "grpo.steps=2", "grpo.batch_size=2", "grpo.num_generations=2",
        "grpo.max_new_tokens=8", "grpo.checkpoint_every=2"]
SCRIPT = """
import json, sys
from pathlib import Path
import jax
from models import registry
from tests.training import runs
from training import grpo, mesh, sft
from tests.training.test_grpo import length_reward

out, sets = Path(sys.argv[1]), json.loads(sys.argv[2])
config = runs.config(*sets, student={student!r})
device_mesh = mesh.create(config.mesh)
loaded = registry.load(config.student.model, mesh=device_mesh)
embedding = loaded.model.embedder.input_embedding[...]
placed = {{"devices": len(jax.devices()), "embedding_devices": len(embedding.sharding.device_set),
          "embedding_spec": str(getattr(embedding.sharding, "spec", None))}}
run = runs.make_run(out / "run", n_train=8, n_val=1, student=config.student.model)
sft.run(run, config)
losses = [r["loss"] for r in sft.MetricsLog(run / "sft" / sft.METRICS_LOG, []).rows() if "loss" in r]
grpo_steps = None
if len(sys.argv) > 3:
    grpo.run(run, config, reward_fns=[length_reward])
    grpo_steps = json.loads((run / "grpo" / "stats.json").read_text())["steps"]
(out / "result.json").write_text(json.dumps({{**placed, "losses": losses, "grpo_steps": grpo_steps}}))
"""


def _run(tmp: Path, cache: Path, devices: int, sets: list[str], *, grpo: bool) -> tuple[dict, str]:
    """One training subprocess on `devices` fake CPU devices: (its result.json, its log)."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    args = [sys.executable, "-c", SCRIPT.format(student=STUDENT), str(tmp), json.dumps(sets)] + (["grpo"] * grpo)
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return json.loads((tmp / "result.json").read_text()), log


def test_sft_on_an_fsdp4_tp2_mesh_matches_one_device_and_grpo_runs_there(tmp_path):
    cache = tmp_path / "hf-cache"
    hf_models.install(cache, STUDENT, "gemma3")
    one, _ = _run(tmp_path / "one", cache, 1, SETS, grpo=False)
    sharded, log = _run(tmp_path / "mesh", cache, 8, [*SETS, "mesh.fsdp=4", "mesh.tp=2"], grpo=True)
    assert (one["devices"], sharded["devices"]) == (1, 8)
    # The embedding (vocab x width) is split over tp and fsdp from the moment it is read: all 8 devices
    assert sharded["embedding_devices"] == 8 and sharded["embedding_spec"] == "P('tp', 'fsdp')"
    assert "Resharding model from None" not in log and "do not share the same backbone" not in log
    assert len(one["losses"]) == len(sharded["losses"]) == 4
    for single, mesh in zip(one["losses"], sharded["losses"]):
        assert mesh == pytest.approx(single, rel=1e-3)
    assert sharded["losses"][-1] < sharded["losses"][0]  # it did learn
    assert sharded["grpo_steps"] == 2
    print(f"\nSFT losses, 1 device: {one['losses']}\nSFT losses, fsdp 4 x tp 2: {sharded['losses']}")
