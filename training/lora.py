"""LoRA adapters (qwix) on a Tunix model: apply, fold in, extract, save, load, and the student per stage.

An adapter file holds only the LoRA matrices (`adapter.safetensors`, a few MB for the 270M
model) plus, in its metadata, the rank, alpha, target regex and base model it was made for;
the base weights always come from the model registry. Adapters stack: GRPO trains a fresh
adapter on the student with the SFT adapter folded into its weights (`fold`), so the GRPO
student is base, then SFT folded in, then GRPO folded in (`load_student`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from machinery import store
from machinery.config import Config, LoraConfig
from models import registry
from models.gemma_forward import LORA_DELTAS as GEMMA_DELTAS

logger = logging.getLogger(__name__)

ADAPTER = "adapter.safetensors"
STAGES = ("sft", "grpo")
# How a LoRA pair (A, B) becomes a delta in the base weight's layout, per wrapped module (qwix shapes):
# Gemma 3's einsums, and Qwen's and Llama's projections: q/k/v w (embed, heads, head_dim), o w
# (heads, head_dim, embed); the MLP kernels are (in, out) in every family.
DELTAS = {**GEMMA_DELTAS, "q_proj": "dr,rnh->dnh", "k_proj": "dr,rnh->dnh", "v_proj": "dr,rnh->dnh",
          "o_proj": "nhr,rd->nhd"}


class AdapterError(Exception):
    """An adapter file is missing or does not fit the model it is loaded into."""


def apply(model: Any, config: LoraConfig, *, seed: int = 0) -> Any:
    """The model with LoRA on the target modules: B starts at zero, so outputs are unchanged."""
    import qwix
    from flax import nnx

    provider = qwix.LoraProvider(module_path=config.targets, rank=config.rank, alpha=config.alpha)
    # rngs must be given: without it qwix initialises A from a fixed key whatever the seed.
    return qwix.apply_lora_to_model(model, provider, **model.get_model_input(), rngs=nnx.Rngs(seed))


def params(model: Any) -> dict[str, np.ndarray]:
    """The LoRA matrices by dotted path (`layers.0.attn.q_einsum.w_lora_a`), as NumPy arrays."""
    from flax import nnx

    found = {".".join(map(str, path)): np.asarray(var.get_value())
             for path, var in nnx.iter_graph(model) if isinstance(var, nnx.LoRAParam)}
    if not found:
        raise AdapterError("the model has no LoRA parameters; apply() one first")
    return found


def set_params(model: Any, values: dict[str, np.ndarray], *, where: str = "adapter") -> None:
    """Overwrite the model's LoRA matrices in place; AdapterError names any missing or misshapen one."""
    import jax
    from flax import nnx

    variables = {".".join(map(str, path)): var for path, var in nnx.iter_graph(model)
                 if isinstance(var, nnx.LoRAParam)}
    if set(variables) != set(values):
        missing, extra = sorted(set(variables) - set(values)), sorted(set(values) - set(variables))
        raise AdapterError(f"{where}: LoRA parameters do not match the model: missing {missing[:4]}, "
                           f"unexpected {extra[:4]} (different lora.targets?)")
    for name, var in variables.items():
        current = var.get_value()
        if tuple(current.shape) != tuple(values[name].shape):
            raise AdapterError(f"{where}: {name} has shape {values[name].shape}, the model expects "
                               f"{current.shape} (different lora.rank or base model?)")
        # On the sharding qwix gave it (from its base weight), not on one device
        var.set_value(jax.device_put(np.asarray(values[name], dtype=current.dtype), current.sharding))


def save(model: Any, path: Path, *, config: LoraConfig, base: str) -> None:
    """Write the model's LoRA matrices (only those) to a safetensors file, atomically."""
    from safetensors.numpy import save

    metadata = {"rank": str(config.rank), "alpha": str(config.alpha), "targets": config.targets, "base": base}
    tensors = {name: np.ascontiguousarray(value) for name, value in params(model).items()}
    store.atomic_write_bytes(path, save(tensors, metadata=metadata))


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(LoRA matrices, metadata) of an adapter file."""
    from safetensors import safe_open

    if not path.is_file():
        raise AdapterError(f"adapter not found: {path}; run the stage that makes it first")
    with safe_open(str(path), framework="numpy") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})


def load_into(model: Any, path: Path, *, config: LoraConfig, seed: int = 0) -> Any:
    """The model with LoRA applied and the adapter's matrices loaded."""
    values, metadata = read(path)
    expected = {"rank": str(config.rank), "alpha": str(config.alpha), "targets": config.targets}
    differing = {k: (metadata.get(k), v) for k, v in expected.items() if metadata.get(k) != v}
    if differing:
        raise AdapterError(f"{path}: adapter made with different LoRA settings (file, config): "
                           f"{json.dumps(differing)}")
    lora_model = apply(model, config, seed=seed)
    set_params(lora_model, values, where=str(path))
    return lora_model


def fold(base: Any, lora_model: Any, config: LoraConfig) -> Any:
    """A plain model (no qwix wrappers): `base` with the LoRA deltas B A * alpha / rank added.

    Computed where the weights are, each result put back on its base weight's sharding; the
    weights without LoRA are the base's own arrays (no copy). qwix's LoRA modules set
    attributes when called, so a plain model is also what a `jax.jit` closing over it needs.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    pairs: dict[str, dict[str, Any]] = {}
    for path, var in nnx.iter_graph(lora_model):
        if isinstance(var, nnx.LoRAParam):
            weight, _, half = ".".join(map(str, path)).rpartition("_lora_")
            pairs.setdefault(weight, {})[half] = var.get_value()
    plain = nnx.clone(base)
    weights = {".".join(map(str, path)): var for path, var in nnx.iter_graph(plain)
               if isinstance(var, nnx.Param) and not isinstance(var, nnx.LoRAParam)}
    scale = config.alpha / config.rank
    for weight, pair in pairs.items():
        module = weight.split(".")[-2]
        if module not in DELTAS or weight not in weights:
            raise AdapterError(f"cannot fold LoRA on {weight}: known modules {', '.join(DELTAS)}")
        value = weights[weight].get_value()
        delta = jnp.einsum(DELTAS[module], pair["a"].astype(jnp.float32), pair["b"].astype(jnp.float32))
        merged = (value.astype(jnp.float32) + scale * delta).astype(value.dtype)
        weights[weight].set_value(jax.device_put(merged, value.sharding))
    return plain


def folded(base: Any, path: Path, config: LoraConfig, *, seed: int = 0) -> Any:
    """`base` with the adapter file at `path` folded in (a plain model)."""
    return fold(base, load_into(base, path, config=config, seed=seed), config)


def load_student(run_dir: Path, stage: str | None, config: Config, *, mesh: Any = None) -> registry.LoadedModel:
    """The student: the base model (stage None), base + SFT adapter ("sft"), or + the GRPO adapter on that ("grpo").

    The adapters come back folded into a plain Tunix model (see `fold`).
    """
    base = registry.load(config.student.model, seed=config.seed, revision=config.student.revision, mesh=mesh,
                         dtype=config.student.dtype)
    if stage is None:
        return base
    if stage not in STAGES:
        raise ValueError(f"stage must be None or one of {', '.join(STAGES)}; got {stage!r}")
    model, sources = base.model, []
    for step in STAGES[: STAGES.index(stage) + 1]:  # GRPO's adapter was trained on the SFT-folded student
        path = run_dir / step / ADAPTER
        model = folded(model, path, config.sft.lora, seed=config.seed)
        sources.append(str(path))
    return dataclasses.replace(base, name=f"{base.name}+{stage}", model=model,
                               source=" + ".join([base.source, *sources]))
