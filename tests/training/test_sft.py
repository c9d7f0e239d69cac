"""The SFT stage on the tiny student: loss falls, a killed run resumes, a finished one is skipped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from machinery import store
from models import likelihood, registry
from tests.training import runs
from training import lora, sft


def test_loss_falls_over_30_steps_on_a_fixed_batch(tmp_path):
    run = runs.make_run(tmp_path, n_train=2, n_val=1)  # batch 2 = the whole train split: a fixed batch
    sft.run(run, runs.config("sft.steps=30", "sft.learning_rate=3e-3", "sft.eval_every=10", "sft.checkpoint_every=30"))
    metrics = pl.read_parquet(run / "sft" / "metrics.parquet")
    losses = metrics.filter(pl.col("loss").is_not_null())["loss"].to_list()
    assert metrics.filter(pl.col("loss").is_not_null())["step"].to_list() == list(range(1, 31))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert metrics.filter(pl.col("eval_loss").is_not_null())["step"].to_list() == [0, 10, 20, 30]
    assert (metrics.filter(pl.col("loss").is_not_null())["tokens_per_s"] > 0).all()


def test_too_long_rows_are_rejected_and_counted(tmp_path):
    run = runs.make_run(tmp_path, n_train=2, n_val=1, long_problems=2)
    manifest = sft.run(run, runs.config("sft.steps=1"))
    rejected = pl.read_parquet(run / "sft" / "rejected.parquet")
    assert rejected["reject_reason"].to_list() == ["too_long", "too_long"]
    assert manifest.counts == {"rows_in": 5, "kept": 3, "rejected": 2}
    assert json.loads((run / "sft" / "stats.json").read_text())["reasons"] == {"too_long": 2}


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


def test_killed_run_resumes_to_the_adapter_of_an_uninterrupted_run(tmp_path, monkeypatch):
    run = runs.make_run(tmp_path / "killed")
    config = runs.config("sft.steps=8", "sft.checkpoint_every=3", "sft.eval_every=4", "sft.learning_rate=1e-3")
    original = sft.MetricsLog.train_step

    def die_at_step_5(self, step, *args, **kwargs):
        original(self, step, *args, **kwargs)
        if step == 5:
            raise Killed("killed after step 5; the last checkpoint is step 3")

    monkeypatch.setattr(sft.MetricsLog, "train_step", die_at_step_5)
    with pytest.raises(Killed):
        sft.run(run, config)
    assert store.complete_manifest(run / "sft") is None
    assert [r["step"] for r in sft.MetricsLog(run / "sft" / sft.METRICS_LOG, []).rows() if "loss" in r] == [1, 2, 3, 4, 5]
    monkeypatch.undo()

    manifest = sft.run(run, config)
    stats = json.loads((run / "sft" / "stats.json").read_text())
    assert stats["resumed_from"] == 3 and stats["steps"] == 8
    metrics = pl.read_parquet(run / "sft" / "metrics.parquet")
    assert metrics.filter(pl.col("loss").is_not_null())["step"].to_list() == list(range(1, 9))
    assert metrics["step"].n_unique() == metrics.height  # one row per step, eval joined in
    assert lora.ADAPTER in manifest.outputs

    whole = runs.make_run(tmp_path / "whole")
    sft.run(whole, config)
    resumed, _ = lora.read(run / "sft" / lora.ADAPTER)
    uninterrupted, _ = lora.read(whole / "sft" / lora.ADAPTER)
    assert resumed.keys() == uninterrupted.keys()
    assert max(float(np.abs(resumed[k] - uninterrupted[k]).max()) for k in resumed) <= 1e-6


def test_second_run_with_the_same_key_is_skipped_and_changed_config_starts_over(tmp_path):
    run = runs.make_run(tmp_path, n_train=2, n_val=1)
    first = sft.run(run, runs.config("sft.steps=2"))
    assert sft.run(run, runs.config("sft.steps=2")).started_at == first.started_at  # skipped
    third = sft.run(run, runs.config("sft.steps=3"))
    assert third.key != first.key
    assert json.loads((run / "sft" / "stats.json").read_text())["resumed_from"] == 0  # other key: wiped


def test_empty_train_split_gives_the_identity_adapter(tmp_path, caplog):
    run = runs.make_run(tmp_path, n_train=0, n_val=2)
    manifest = sft.run(run, runs.config("sft.steps=5"))
    assert manifest.counts["kept"] == 2 and "no training rows" in caplog.text
    values, _ = lora.read(run / "sft" / lora.ADAPTER)
    assert all(not v.any() for name, v in values.items() if "lora_b" in name)


def test_load_student_applies_the_sft_adapter(tmp_path):
    run = runs.make_run(tmp_path, n_train=2, n_val=1)
    config = runs.config("sft.steps=3", "sft.learning_rate=1e-2")
    sft.run(run, config)
    base, tuned = lora.load_student(run, None, config), lora.load_student(run, "sft", config)
    text = ["<start_of_turn>user\nWhat is 1 + 4?<end_of_turn>\n<start_of_turn>model\n<reasoning>"]
    before, after = likelihood.token_nll(base, text)[0], likelihood.token_nll(tuned, text)[0]
    assert not np.allclose(before, after)
    manual = lora.load_into(registry.load(config.student.model, seed=config.seed).model, run / "sft" / lora.ADAPTER,
                            config=config.sft.lora)
    assert any(v.any() for k, v in lora.params(manual).items() if "lora_b" in k)  # trained, not the identity


def test_one_cpu_device_is_a_1x1_auto_mesh_and_a_wrong_shape_is_named():
    import jax

    from machinery.config import MeshConfig
    from training import mesh

    one = mesh.create(MeshConfig())
    assert dict(one.shape) == {"fsdp": 1, "tp": 1}
    assert one.axis_types == (jax.sharding.AxisType.Auto,) * 2  # explicit axes break Tunix's trainers
    with pytest.raises(ValueError, match="fsdp=2 x tp=1"):
        mesh.create(MeshConfig(fsdp=2))


def test_multihost_joins_the_pod_before_making_the_mesh_and_only_then():
    from machinery.config import MeshConfig
    from training import mesh

    calls = []
    mesh.create(MeshConfig(), initialize=lambda: calls.append("single host"))
    assert calls == []  # one host: jax.distributed is never started
    with pytest.raises(RuntimeError, match="joined"):
        mesh.create(MeshConfig(multihost=True), initialize=lambda: (_ for _ in ()).throw(RuntimeError("joined")))


def test_sigkilled_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    """A real SIGKILL mid-training: the re-run starts at the newest complete checkpoint, steps stay gapless."""
    run = runs.make_run(tmp_path)
    sets = ["sft.steps=100", "sft.checkpoint_every=5", "sft.eval_every=50"]
    script = (f"from pathlib import Path\nfrom training import sft\nfrom tests.training import runs\n"
              f"sft.run(Path({str(run)!r}), runs.config(*{sets!r}))\n")
    checkpoints = run / "sft" / sft.CHECKPOINTS
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.isdigit() and int(p.name) >= 10 for p in checkpoints.glob("*")):
            assert child.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step 10 within 240 s"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert store.complete_manifest(run / "sft") is None
    steps_on_disk = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]

    sft.run(run, runs.config(*sets))
    stats = json.loads((run / "sft" / "stats.json").read_text())
    assert stats["resumed_from"] in steps_on_disk and stats["resumed_from"] >= 10 and stats["steps"] == 100
    metrics = pl.read_parquet(run / "sft" / "metrics.parquet")
    assert metrics.filter(pl.col("loss").is_not_null())["step"].to_list() == list(range(1, 101))


def _base_params(model) -> dict[str, np.ndarray]:
    """Every non-LoRA parameter by path, copied to NumPy."""
    from flax import nnx

    return {".".join(map(str, path)): np.array(var.get_value()) for path, var in nnx.iter_graph(model)
            if isinstance(var, nnx.Param) and not isinstance(var, nnx.LoRAParam)}


def _train(run: Path, config, stage_dir: Path):
    """sft.train on the run's SFT rows, the student read onto the mesh as the stage does: (base, LoRA model, stats)."""
    from training import mesh

    device_mesh = mesh.create(config.mesh)
    loaded = sft.load_student(config, device_mesh)
    kept, _ = sft.encode(store.finished(run, "build").read("sft.parquet"), loaded.tokenizer, config.sft.max_length)
    model, stats = sft.train(loaded, kept, stage_dir, config, key="test", force=False, device_mesh=device_mesh)
    return loaded, model, stats


def test_sft_changes_the_lora_weights_and_leaves_the_base_alone(tmp_path):
    run = runs.make_run(tmp_path, n_train=2, n_val=1)
    config = runs.config("sft.steps=3", "sft.learning_rate=1e-2")
    untouched = _base_params(registry.load(config.student.model, seed=config.seed).model)
    initial = lora.params(lora.apply(registry.load(config.student.model, seed=config.seed).model, config.sft.lora,
                                     seed=config.seed))
    _, model, _ = _train(run, config, tmp_path / "sft")
    trained_base = _base_params(model)
    assert trained_base.keys() == untouched.keys()
    assert all(np.array_equal(trained_base[name], untouched[name]) for name in untouched)
    trained = lora.params(model)
    changed = [name for name in initial if not np.array_equal(initial[name], trained[name])]
    assert all(not initial[n].any() for n in initial if n.endswith("lora_b"))  # B starts at zero...
    assert {n for n in trained if n.endswith("lora_b")} <= set(changed)  # ...and every B moved


def test_sft_train_step_compiles_once_over_5_steps(tmp_path):
    run = runs.make_run(tmp_path, n_train=6, n_val=1)  # rows of different lengths: one padded shape
    rows = store.finished(run, "build").read("sft.parquet")
    assert (rows["prompt"] + rows["completion"]).str.len_chars().n_unique() > 1
    _, _, stats = _train(run, runs.config("sft.steps=5", "sft.batch_size=2"), tmp_path / "sft")
    assert stats.steps == 5 and stats.train_step_compiles == 1
