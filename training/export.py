"""Merge a LoRA adapter into its base Gemma 3 and export a Hugging Face safetensors folder.

The folder (`model.safetensors`, `config.json`, `tokenizer.model`) loads again with
`training.models.load(path)`. The weight layout inverts Tunix's own safetensors loader
(`tunix/models/gemma3/params_safetensors.py`): HF stores projections as (out, in).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from curation import store
from curation.config import LoraConfig
from models.files import staged_folder
from models.gemma_forward import LORA_DELTAS

logger = logging.getLogger(__name__)

MODEL_DIR = "model"  # a training stage's exported Hugging Face folder, e.g. grpo/model/

_TUNIX_FIELDS = ("num_layers", "num_embed", "embed_dim", "hidden_dim", "num_heads", "head_dim", "num_kv_heads",
                 "sliding_window_size", "local_base_frequency", "global_base_frequency", "local_scale_factor",
                 "global_scale_factor")
_NORMS = {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
          "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def merged_params(lora_model: Any, config: LoraConfig) -> dict[str, np.ndarray]:
    """Every base parameter by dotted Tunix path, with the LoRA deltas (B A * alpha / rank) added."""
    from flax import nnx

    base: dict[str, np.ndarray] = {}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for path, var in nnx.iter_graph(lora_model):
        if not isinstance(var, nnx.Variable) or isinstance(var, nnx.RngState):
            continue
        name = ".".join(map(str, path))
        if isinstance(var, nnx.LoRAParam):
            weight, _, half = name.rpartition("_lora_")
            pairs.setdefault(weight, {})[half] = np.asarray(var.get_value(), np.float32)
        elif isinstance(var, nnx.Param):
            base[name] = np.asarray(var.get_value(), np.float32)
    scale = config.alpha / config.rank
    for weight, pair in pairs.items():
        module = weight.split(".")[-2]
        if module not in LORA_DELTAS or weight not in base:
            raise LookupError(f"cannot merge LoRA on {weight}: known modules {', '.join(LORA_DELTAS)}")
        base[weight] = base[weight] + scale * np.einsum(LORA_DELTAS[module], pair["a"], pair["b"])
    return base


def hf_tensors(params: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Tunix Gemma 3 parameters renamed and reshaped to Hugging Face's Gemma 3 layout."""
    d = config.embed_dim
    out = {"model.embed_tokens.weight": params["embedder.input_embedding"],
           "model.norm.weight": params["final_norm.scale"]}
    for i in range(config.num_layers):
        p, h = f"layers.{i}.", f"model.layers.{i}."

        def proj(w: np.ndarray) -> np.ndarray:  # (heads, embed, head_dim) -> (heads*head_dim, embed)
            return np.transpose(w, (0, 2, 1)).reshape(-1, d)

        if p + "attn.qkv_einsum.w" in params:
            q, k, v = params[p + "attn.qkv_einsum.w"]
        else:
            q, (k, v) = params[p + "attn.q_einsum.w"], params[p + "attn.kv_einsum.w"]
        out |= {h + "self_attn.q_proj.weight": proj(q), h + "self_attn.k_proj.weight": proj(k),
                h + "self_attn.v_proj.weight": proj(v),
                h + "self_attn.o_proj.weight": params[p + "attn.attn_vec_einsum.w"].reshape(-1, d).T,
                h + "self_attn.q_norm.weight": params[p + "attn._query_norm.scale"],
                h + "self_attn.k_norm.weight": params[p + "attn._key_norm.scale"]}
        for proj_name in ("gate_proj", "up_proj", "down_proj"):
            out[h + f"mlp.{proj_name}.weight"] = params[p + f"mlp.{proj_name}.kernel"].T
        for ours, theirs in _NORMS.items():
            out[h + f"{theirs}.weight"] = params[p + f"{ours}.scale"]
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def hf_config(config: Any) -> dict[str, Any]:
    """config.json: the HF keys models.load dispatches on, plus Tunix's own numbers to rebuild any size."""
    numbers = {name: getattr(config, name) for name in _TUNIX_FIELDS}
    return {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
            "num_hidden_layers": config.num_layers, "hidden_size": config.embed_dim,
            "intermediate_size": config.hidden_dim, "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
            "vocab_size": config.num_embed, "sliding_window": config.sliding_window_size,
            "torch_dtype": "float32", "tunix_model_config": numbers}


def merged(loaded: Any, lora_model: Any, out_dir: Path, *, lora: LoraConfig) -> list[str]:
    """Write base + LoRA merged as a HF safetensors folder (replacing out_dir); returns the file names."""
    from safetensors.numpy import save_file

    tensors = hf_tensors(merged_params(lora_model, lora), loaded.config)
    with staged_folder(out_dir) as staging:  # a killed export leaves no half-written model folder
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        store.write_json(hf_config(loaded.config), staging / "config.json")
        store.atomic_write_bytes(staging / "tokenizer.model", loaded.tokenizer.serialized_model_proto())
    logger.info("exported the merged model (%d tensors) to %s", len(tensors), out_dir)
    return ["model.safetensors", "config.json", "tokenizer.model"]


def merged_model(loaded: Any, lora_model: Any, *, lora: LoraConfig) -> Any:
    """A plain Tunix model (no qwix wrappers) with the LoRA deltas folded into its weights."""
    import jax.numpy as jnp
    from flax import nnx

    values = merged_params(lora_model, lora)
    plain = nnx.clone(loaded.model)
    for path, var in nnx.iter_graph(plain):
        name = ".".join(map(str, path))
        if isinstance(var, nnx.Param) and name in values:
            var.set_value(jnp.asarray(values[name], dtype=var.get_value().dtype))
    return plain
