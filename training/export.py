"""Export a trained student as a Hugging Face folder that transformers and vLLM load with the same numbers.

`sft/model/` and `grpo/model/` hold `model.safetensors` (float32 or bfloat16, as
`student.dtype`), a complete `config.json`, `generation_config.json` and the tokenizer files.
- config.json: every field of the family's transformers config class (Gemma3TextConfig,
  Qwen2Config, Qwen3Config, LlamaConfig) with the source model's values, so nothing is left to
  a reader's defaults (Gemma 3 4B's global rope factor 8 and window 1024 were); the rope also
  under the legacy keys (`rope_theta`, `rope_scaling`, `rope_local_base_freq`) that
  transformers 4 and vLLM builds on it read instead of `rope_parameters`.
- Weights: Gemma 3 by inverting Tunix's safetensors loader (`tunix/models/gemma3/
  params_safetensors.py`: HF stores projections as (out, in), Tunix fuses k and v); the
  other families by running Tunix's own name mapping backwards over the source folder's
  tensor names and shapes, so the export has exactly the source's names and layout.
- The embedded GGUF model has no Hugging Face folder: its config is Gemma 3 270M's, its
  tokenizer the converted sentencepiece model with a tokenizer_config.json, and the tokenizer.json
  transformers converts from it (so readers need neither sentencepiece nor protobuf).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from machinery import store
from models import chat, hf
from models.files import staged_folder

logger = logging.getLogger(__name__)

MODEL_DIR = "model"  # a training stage's exported Hugging Face folder, e.g. grpo/model/
FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json")
COPIED = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
          "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
ARCHITECTURES = {"gemma3_text": "Gemma3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM", "llama": "LlamaForCausalLM"}
_NORMS = {"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
          "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def params(model: Any) -> dict[str, np.ndarray]:
    """Every weight of a plain Tunix model by dotted path, on the host in its own dtype (gathered from all hosts)."""
    from flax import nnx
    from jax.experimental import multihost_utils

    found = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and not isinstance(var, nnx.LoRAParam):
            value = var.get_value()
            if not getattr(value, "is_fully_addressable", True):  # a pod: parts live on other hosts
                value = multihost_utils.process_allgather(value, tiled=True)
            found[".".join(map(str, path))] = np.asarray(value)
    return found


def gemma_tensors(weights: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """Tunix Gemma 3 weights renamed and reshaped to Hugging Face's Gemma3ForCausalLM layout."""
    d = config.embed_dim
    out = {"model.embed_tokens.weight": weights["embedder.input_embedding"],
           "model.norm.weight": weights["final_norm.scale"]}
    for i in range(config.num_layers):
        p, h = f"layers.{i}.", f"model.layers.{i}."

        def proj(w: np.ndarray) -> np.ndarray:  # (heads, embed, head_dim) -> (heads*head_dim, embed)
            return np.transpose(w, (0, 2, 1)).reshape(-1, d)

        if p + "attn.qkv_einsum.w" in weights:
            q, k, v = weights[p + "attn.qkv_einsum.w"]
        else:
            q, (k, v) = weights[p + "attn.q_einsum.w"], weights[p + "attn.kv_einsum.w"]
        out |= {h + "self_attn.q_proj.weight": proj(q), h + "self_attn.k_proj.weight": proj(k),
                h + "self_attn.v_proj.weight": proj(v),
                h + "self_attn.o_proj.weight": weights[p + "attn.attn_vec_einsum.w"].reshape(-1, d).T,
                h + "self_attn.q_norm.weight": weights[p + "attn._query_norm.scale"],
                h + "self_attn.k_norm.weight": weights[p + "attn._key_norm.scale"]}
        for proj_name in ("gate_proj", "up_proj", "down_proj"):
            out[h + f"mlp.{proj_name}.weight"] = weights[p + f"mlp.{proj_name}.kernel"].T
        for ours, theirs in _NORMS.items():
            out[h + f"{theirs}.weight"] = weights[p + f"{ours}.scale"]
    return out


def source_tensors(weights: dict[str, np.ndarray], loaded: Any) -> dict[str, np.ndarray]:
    """Tunix weights under the source folder's own tensor names and shapes: Tunix's loader mapping, backwards."""
    from tunix.utils.torch_utils import torch_key_to_jax_key

    mapping = importlib.import_module(hf.LOADERS[loaded.family])._get_key_and_transform_mapping(loaded.config)
    out, used = {}, set()
    for name, shape in hf.tensor_shapes(loaded.folder).items():
        key, transform = torch_key_to_jax_key(mapping, name)
        if key not in weights and name == "lm_head.weight":  # a tied model's stored copy of the embedding
            out[name] = weights["embedder.input_embedding"]
            continue
        if key not in weights:
            raise LookupError(f"export: {loaded.folder} has {name}, which the Tunix model has no weight for ({key})")
        value = weights[key]
        if transform is not None:  # the loader did x.transpose(permute).reshape(reshape): undo both
            permute, _ = transform
            order = permute or tuple(range(len(shape)))
            value = value.reshape(tuple(shape[i] for i in order)).transpose(np.argsort(order))
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"export: {name} comes out {value.shape}, the source has {shape}")
        out[name], used = value, used | {key}
    missing = sorted(set(weights) - used)
    if missing:
        raise LookupError(f"export: Tunix weights with no tensor in {loaded.folder}: {missing[:4]}")
    return out


def tensors(loaded: Any, model: Any) -> dict[str, np.ndarray]:
    """The Hugging Face tensors of a plain Tunix model of `loaded`'s family."""
    weights = params(model)
    if loaded.family == "gemma3":
        return gemma_tensors(weights, loaded.config)
    return source_tensors(weights, loaded)


def _gemma_source(config: Any, tokenizer: Any) -> dict[str, Any]:
    """config.json values of a Gemma 3 known only as a Tunix config (the embedded GGUF model, the tiny one)."""
    from tunix.models.gemma3 import model as lib

    pattern = [lib.GEMMA3_ATTENTION_PATTERN[i % len(lib.GEMMA3_ATTENTION_PATTERN)] for i in range(config.num_layers)]
    by_head = config.query_pre_attn_norm == lib.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM
    scaling = ({"rope_type": "linear", "factor": float(config.global_scale_factor)}
               if config.global_scale_factor != 1.0 else None)
    return {"model_type": "gemma3_text", "num_hidden_layers": config.num_layers, "hidden_size": config.embed_dim,
            "intermediate_size": config.hidden_dim, "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
            "vocab_size": config.num_embed, "sliding_window": config.sliding_window_size,
            "query_pre_attn_scalar": config.head_dim if by_head else config.embed_dim // config.num_heads,
            "rope_theta": float(config.global_base_frequency), "rope_local_base_freq": float(config.local_base_frequency),
            "rope_scaling": scaling, "layer_types": ["sliding_attention" if p == lib.AttentionType.LOCAL_SLIDING
                                                     else "full_attention" for p in pattern],
            "max_position_embeddings": 32768, "tie_word_embeddings": True, "bos_token_id": tokenizer.bos_id(),
            "eos_token_id": tokenizer.eos_id(), "pad_token_id": tokenizer.pad_id()}


def _legacy_rope(full: dict[str, Any]) -> dict[str, Any]:
    """The rope under transformers 4's keys, for readers that ignore `rope_parameters`."""
    ropes = full.get("rope_parameters") or {}

    def scaling(parameters: dict[str, Any]) -> dict[str, Any] | None:
        rest = {k: v for k, v in parameters.items() if k != "rope_theta"}
        return rest if rest.get("rope_type", "default") != "default" else None

    if full["model_type"] == "gemma3_text":
        return {"rope_theta": ropes["full_attention"]["rope_theta"], "rope_scaling": scaling(ropes["full_attention"]),
                "rope_local_base_freq": ropes["sliding_attention"]["rope_theta"],
                "sliding_window_pattern": full.get("_sliding_window_pattern", 6)}
    return {"rope_theta": ropes["rope_theta"], "rope_scaling": scaling(ropes)}


def hf_config(loaded: Any, *, vocab: int, dtype: str) -> dict[str, Any]:
    """A complete config.json: every field of the family's transformers config class, the source's values."""
    if loaded.folder is not None and hf.family(_raw(loaded.folder)) != "unknown":
        config = hf.text_config(_raw(loaded.folder), str(loaded.folder / "config.json"))
    else:
        config = hf.transformers_module().Gemma3TextConfig.from_dict(_gemma_source(loaded.config, loaded.tokenizer))
    full = config.to_dict()
    if full["model_type"] == "gemma3_text":  # one rope per layer type; transformers 5.12 adds stray flat keys
        full["rope_parameters"] = {kind: full["rope_parameters"][kind] for kind in set(full["layer_types"])
                                   | {"sliding_attention", "full_attention"}}
    full.update(architectures=[ARCHITECTURES[full["model_type"]]], vocab_size=vocab, dtype=dtype, torch_dtype=dtype,
                _name_or_path=loaded.hub_id or "")
    full.pop("transformers_version", None)  # ours is not the reader's
    return {**full, **_legacy_rope(full)}


def _raw(folder: Path) -> dict[str, Any]:
    """A folder's config.json, or {} (the converted GGUF folder's config.json is not a Hugging Face one)."""
    raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return raw if "model_type" in raw else {}


def _tokenizer_files(loaded: Any, staging: Path) -> None:
    """The source's tokenizer files and generation_config.json as they are; for a sentencepiece-only model
    (the converted GGUF, the tiny one), tokenizer.model, a tokenizer_config.json and a tokenizer.json."""
    copied = []
    if loaded.folder is not None and _raw(loaded.folder):
        for name in COPIED:
            if (loaded.folder / name).is_file():
                shutil.copyfile(loaded.folder / name, staging / name)
                copied.append(name)
    if "tokenizer.model" not in copied and "tokenizer.json" not in copied:
        store.atomic_write_bytes(staging / "tokenizer.model", loaded.tokenizer.serialized_model_proto())
    if "tokenizer_config.json" not in copied:
        tokenizer = loaded.tokenizer
        special = {role: tokenizer.id_to_piece(i) for role, i in (
            ("bos_token", tokenizer.bos_id()), ("eos_token", tokenizer.eos_id()), ("pad_token", tokenizer.pad_id()),
            ("unk_token", tokenizer.unk_id())) if i is not None and i >= 0}
        template = loaded.chat.template if loaded.chat is not None else chat.GEMMA
        store.write_json({"tokenizer_class": "GemmaTokenizer", **special, "add_bos_token": True,
                          "add_eos_token": False, "chat_template": template}, staging / "tokenizer_config.json")
    if "tokenizer.json" not in copied and hasattr(loaded.tokenizer, "serialized_model_proto"):
        try:
            converted, differs = _converted(loaded.tokenizer.serialized_model_proto(),
                                            (staging / "tokenizer_config.json").read_bytes())
        except Exception as err:  # noqa: BLE001 - a tokenizer.json is a convenience; the export stands without it
            converted, differs = b"", f"transformers' conversion failed: {type(err).__name__}: {err}"
        if differs is None:
            store.atomic_write_bytes(staging / "tokenizer.json", converted)
        else:
            logger.warning("export: no tokenizer.json (%s); readers need sentencepiece and protobuf for "
                           "tokenizer.model", differs)


# Whitespace runs, tabs, digits, punctuation, accents, CJK, emoji and the chat turn markers.
PROBES = ("Janet's ducks lay 16 eggs per day; she eats 3.5% of them (about $2,000.75).",
          "  two  spaces\tand a tab\n\n\nthen lines   ", "ünïcödé, naïve café, 日本語のテキスト, emoji 😀👍",
          "<start_of_turn>user\nWhat is 12 * 3?<end_of_turn>\n<start_of_turn>model\n<reasoning>\n12 * 3 = 36\n"
          "</reasoning>\n<answer>\n36\n</answer>")


@functools.lru_cache(maxsize=2)  # the SFT and GRPO exports of one run convert the same tokenizer
def _converted(model_proto: bytes, tokenizer_config: bytes) -> tuple[bytes, str | None]:
    """tokenizer.json converted from a sentencepiece model, and why not to use it (None: it encodes PROBES alike).

    transformers 5 reads a tokenizer.model-only folder through protobuf (without it: "`tiktoken`
    is required"); vLLM and `tokenizers` read tokenizer.json directly. transformers' converter
    assumes Gemma's BPE model, so its result is written only if it encodes PROBES as sentencepiece does.
    """
    import tempfile

    import sentencepiece as spm
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(model_proto)
        (Path(folder) / "tokenizer_config.json").write_bytes(tokenizer_config)
        text = hf.transformers_module().AutoTokenizer.from_pretrained(folder).backend_tokenizer.to_str()
    theirs, ours = Tokenizer.from_str(text), spm.SentencePieceProcessor(model_proto=model_proto)
    differs = next((f"transformers' conversion encodes {p[:40]!r} differently" for p in PROBES
                    if theirs.encode(p, add_special_tokens=False).ids != ours.encode(p)), None)
    return text.encode(), differs


def write(loaded: Any, model: Any, out_dir: Path, *, dtype: str) -> list[str]:
    """Write a plain (LoRA folded) model of `loaded`'s family as a Hugging Face folder, replacing out_dir.

    On a pod every process gathers the weights (a collective) and process 0 writes.
    """
    import ml_dtypes
    from jax.experimental import multihost_utils
    from safetensors.numpy import save_file

    from training.mesh import is_primary

    cast = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    # One dtype in the file: Tunix's loader reads every tensor with the first one's dtype.
    out = {name: np.ascontiguousarray(value.astype(cast)) for name, value in tensors(loaded, model).items()}
    if is_primary():
        vocab = out["model.embed_tokens.weight"].shape[0]
        generation = hf.generation_config(loaded.folder) if loaded.folder is not None and _raw(loaded.folder) else {}
        if not generation:
            tokenizer = loaded.tokenizer
            generation = {"bos_token_id": tokenizer.bos_id(), "eos_token_id": list(loaded.stop_ids or
                                                                                   (tokenizer.eos_id(),)),
                          "pad_token_id": tokenizer.pad_id()}
        with staged_folder(out_dir) as staging:  # a killed export leaves no half-written model folder
            save_file(out, str(staging / "model.safetensors"), metadata={"format": "pt"})
            store.write_json(hf_config(loaded, vocab=vocab, dtype=dtype), staging / "config.json")
            _tokenizer_files(loaded, staging)  # the source's generation_config.json among them
            if not (staging / "generation_config.json").is_file():
                store.write_json(generation, staging / "generation_config.json")
        logger.info("exported %d tensors (%s) to %s", len(out), dtype, out_dir)
    multihost_utils.sync_global_devices(f"export {out_dir}")  # every host sees the folder before going on
    return list(FILES)
