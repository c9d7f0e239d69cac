"""LoRA adapters (qwix) on a Tunix model: apply, extract, save, load, and the student per stage.

An adapter file holds only the LoRA matrices (`adapter.safetensors`, a few MB for the 270M
model) plus, in its metadata, the rank, alpha, target regex and base model it was made for;
the base weights always come from the model registry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from curation import store
from curation.config import Config, LoraConfig
from models import registry

logger = logging.getLogger(__name__)

ADAPTER = "adapter.safetensors"
STAGES = ("sft", "grpo")


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
    import jax.numpy as jnp
    from flax import nnx

    variables = {".".join(map(str, path)): var for path, var in nnx.iter_graph(model)
                 if isinstance(var, nnx.LoRAParam)}
    if set(variables) != set(values):
        missing, extra = sorted(set(variables) - set(values)), sorted(set(values) - set(variables))
        raise AdapterError(f"{where}: LoRA parameters do not match the model: missing {missing[:4]}, "
                           f"unexpected {extra[:4]} (different lora.targets?)")
    for name, var in variables.items():
        if tuple(var.get_value().shape) != tuple(values[name].shape):
            raise AdapterError(f"{where}: {name} has shape {values[name].shape}, the model expects "
                               f"{var.get_value().shape} (different lora.rank or base model?)")
        var.set_value(jnp.asarray(values[name], dtype=var.get_value().dtype))


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


def load_student(run_dir: Path, stage: str | None, config: Config) -> registry.LoadedModel:
    """The student: the base model (stage None), or base + the final adapter of stage "sft"/"grpo".

    The adapter comes back merged into a plain Tunix model: qwix's LoRA modules set attributes
    when called, so they fail inside a `jax.jit` that closes over them (likelihood.teacher_forced).
    """
    from training import export

    base = registry.load(config.student.model, seed=config.seed)
    if stage is None:
        return base
    if stage not in STAGES:
        raise ValueError(f"stage must be None or one of {', '.join(STAGES)}; got {stage!r}")
    path = run_dir / stage / ADAPTER
    lora_config = config.sft.lora  # GRPO trains the SFT adapter further: one LoRA shape for both
    lora_model = load_into(base.model, path, config=lora_config, seed=config.seed)
    plain = export.merged_model(base, lora_model, lora=lora_config)
    return registry.LoadedModel(name=f"{base.name}+{stage}", model=plain, tokenizer=base.tokenizer,
                              config=base.config, source=f"{base.source} + {path}")
