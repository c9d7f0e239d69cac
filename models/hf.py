"""Hugging Face folders as Tunix models: find the folder, read its config.json, build the Tunix model.

A student or teacher named by a Hub id (`Qwen/Qwen2.5-Math-1.5B`) is fetched with
`huggingface_hub.snapshot_download`, which reuses the local cache; with `HF_HUB_OFFLINE=1`
only the cache is read, and a model missing there is one line naming the id and the
download command. Tunix's own `AutoModel.from_pretrained` is not used: it logs in
interactively when HF_TOKEN is unset and lists the repository online on every call.

Tunix has no reader for config.json, only presets; `tunix_config` maps the file (parsed by
transformers' config class of the family, which also reads legacy keys such as
`rope_scaling` and `rope_local_base_freq`) onto Tunix's ModelConfig, and refuses, naming
the field, what Tunix cannot run as the source model does.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from models import rope as rope_lib

# config.json model_type -> Tunix family
FAMILIES = {"gemma3_text": "gemma3", "gemma3": "gemma3", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3",
            "llama": "llama3"}
# Tunix family -> the module with create_model_from_safe_tensors
LOADERS = {"gemma3": "tunix.models.gemma3.params_safetensors", "qwen2": "tunix.models.qwen2.params",
           "qwen3": "tunix.models.qwen3.params", "llama3": "tunix.models.llama3.params"}
# transformers config class per model_type (text part of Gemma 3's multimodal config: gemma3_text)
CONFIG_CLASSES = {"gemma3_text": "Gemma3TextConfig", "gemma3": "Gemma3Config", "qwen2": "Qwen2Config",
                  "qwen3": "Qwen3Config", "qwen3_moe": "Qwen3MoeConfig", "llama": "LlamaConfig"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "config.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelNotFoundError(LookupError):
    """A model name is neither known, a folder, nor a Hub id that can be fetched; the message says what to do."""


class UnsupportedModelError(LookupError):
    """A Hugging Face model Tunix cannot run as its source does; the message names the field and value."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Snapshot:
    """A local Hugging Face folder, and the Hub id and commit it is a snapshot of (None for plain folders)."""

    folder: Path
    hub_id: str | None = None
    revision: str | None = None  # the resolved commit hash


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a path on this machine."""
    return bool(_HUB_ID.fullmatch(name)) and not Path(name).exists()


def _offline() -> bool:
    """Whether HF_HUB_OFFLINE is set now (huggingface_hub reads it only once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_command(hub_id: str, revision: str | None) -> str:
    """The shell command that puts a model into the Hugging Face cache."""
    return f"hf download {hub_id}" + (f" --revision {revision}" if revision else "")


def resolve(name: str, *, revision: str | None = None, allow_patterns: tuple[str, ...] | None = None,
            cache_dir: str | None = None) -> Snapshot:
    """The local folder of a Hugging Face folder path or Hub id (fetched into the HF cache when needed).

    `allow_patterns` fetches only those files (a chat template needs no weights);
    `cache_dir` defaults to $HF_HUB_CACHE read now.
    """
    path = Path(name)
    if path.is_dir():
        return Snapshot(folder=path, hub_id=_origin(path))
    if not is_hub_id(name):
        raise ModelNotFoundError(f"unknown model {name!r}: not a registry name, a folder, or a Hub id (org/name)")
    from huggingface_hub import errors, snapshot_download

    try:
        folder = Path(snapshot_download(name, revision=revision, allow_patterns=list(allow_patterns or ()) or None,
                                        local_files_only=_offline(),
                                        cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE")))
    except errors.GatedRepoError:
        raise ModelNotFoundError(f"model {name!r} is gated: accept its license on huggingface.co/{name} and set "
                                 f"HF_TOKEN, then `{download_command(name, revision)}`") from None
    except errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"no model {name!r} on the Hugging Face Hub (or it is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"model {name!r} has no revision {revision!r}") from None
    except (errors.LocalEntryNotFoundError, OSError) as err:
        why = "HF_HUB_OFFLINE is set" if _offline() else f"the Hub cannot be reached ({type(err).__name__})"
        raise ModelNotFoundError(f"model {name!r} (revision {revision or 'main'}) is not in the Hugging Face cache "
                                 f"and {why}; download it first: {download_command(name, revision)}") from None
    if allow_patterns is None and not any(folder.glob("*.safetensors")):  # offline, only a chat template fetched
        raise ModelNotFoundError(f"model {name!r} is only partly in the Hugging Face cache (no weights); download "
                                 f"it first: {download_command(name, revision)}")
    # snapshot_download returns .../models--org--name/snapshots/<commit>
    return Snapshot(folder=folder, hub_id=name, revision=folder.name)


def _origin(folder: Path) -> str | None:
    """The Hub id a plain folder was saved from (`_name_or_path` in its config.json), when it names one."""
    config = folder / "config.json"
    origin = json.loads(config.read_text()).get("_name_or_path") if config.is_file() else None
    return origin if isinstance(origin, str) and is_hub_id(origin) else None


def raw_config(folder: Path) -> dict[str, Any]:
    """A folder's config.json."""
    path = folder / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{folder}: no config.json (not a Hugging Face model folder)")
    return json.loads(path.read_text())


def transformers_module():
    """transformers for its config classes, quiet: no advice that PyTorch is absent (it is not needed here),
    no warning about the flat keys 5.12 itself adds to Gemma 3's per-layer `rope_parameters`."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return transformers


def text_config(raw: dict[str, Any], where: str) -> Any:
    """transformers' config object of the language model (Gemma 3's `text_config` for the multimodal ones)."""
    model_type = raw.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise UnsupportedModelError(f"{where}: model_type {model_type!r} is not supported; supported: "
                                    f"{', '.join(sorted(CONFIG_CLASSES))}")
    config = getattr(transformers_module(), CONFIG_CLASSES[model_type]).from_dict(raw)
    return config.text_config if model_type == "gemma3" else config


def family(raw: dict[str, Any]) -> str:
    """The Tunix family of a config.json (gemma3, qwen2, qwen3, llama3)."""
    return FAMILIES[raw["model_type"]] if raw.get("model_type") in FAMILIES else "unknown"


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (names, dtypes, shapes) without reading any tensor."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(size))


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape over the folder's *.safetensors files."""
    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        shapes |= {k: tuple(v["shape"]) for k, v in _header(path).items() if k != "__metadata__"}
    if not shapes:
        raise UnsupportedModelError(f"{folder}: no *.safetensors weights")
    return shapes


def _vocab_rows(shapes: dict[str, tuple[int, ...]], where: str) -> int:
    """Rows of the embedding matrix: the vocabulary the weights have (config vocab_size may differ)."""
    rows = [shape[0] for name, shape in shapes.items() if name.endswith("embed_tokens.weight")]
    if not rows:
        raise UnsupportedModelError(f"{where}: no embed_tokens.weight in the safetensors files")
    return rows[0]


def _require(where: str, field: str, value: Any, allowed: Any) -> None:
    """UnsupportedModelError naming a config field whose value Tunix cannot reproduce."""
    if value != allowed:
        raise UnsupportedModelError(f"{where}: {field}={value!r} is not supported by Tunix's model "
                                    f"(supported: {allowed!r})")


def _rope(parameters: dict[str, Any], where: str) -> rope_lib.Rope:
    """The Rope of transformers' `rope_parameters`; kinds models.rope cannot reproduce are refused."""
    try:
        return rope_lib.Rope.from_parameters(parameters, where)
    except rope_lib.RopeError as err:
        raise UnsupportedModelError(str(err)) from None


def tunix_config(folder: Path, *, dtype: Any) -> tuple[str, Any, rope_lib.Rope | None]:
    """(family, Tunix ModelConfig, the rope to fix Tunix's with or None) of a Hugging Face folder."""
    raw = raw_config(folder)
    where = str(folder / "config.json")
    config = text_config(raw, where)
    kind = family(raw)
    shapes = tensor_shapes(folder)
    if kind == "gemma3" and any(name.startswith("model.language_model.") for name in shapes):
        raise UnsupportedModelError(f"{folder}: weights named model.language_model.* (transformers 5's Gemma 3 "
                                    f"layout) are not read by Tunix 0.1.7's Gemma 3 loader")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    common = {"num_layers": config.num_hidden_layers, "embed_dim": config.hidden_size,
              "hidden_dim": config.intermediate_size, "num_heads": config.num_attention_heads, "head_dim": head_dim,
              "num_kv_heads": config.num_key_value_heads}
    vocab = _vocab_rows(shapes, str(folder))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if not tied and kind != "gemma3" and "lm_head.weight" not in shapes:
        raise UnsupportedModelError(f"{where}: tie_word_embeddings is false but there is no lm_head.weight")
    builders = {"gemma3": _gemma3, "qwen2": _qwen2, "qwen3": _qwen3, "llama3": _llama3}
    return kind, *builders[kind](config, common, vocab, tied, dtype, where)


def _gemma3(config, common, vocab, tied, dtype, where) -> tuple[Any, None]:
    from tunix.models.gemma3 import model as lib

    for field in ("attn_logit_softcapping", "final_logit_softcapping"):
        _require(where, field, getattr(config, field, None), None)
    _require(where, "rms_norm_eps", config.rms_norm_eps, 1e-6)  # hard-coded in Tunix's Gemma 3 RMSNorm
    _require(where, "hidden_activation", config.hidden_activation, "gelu_pytorch_tanh")
    pattern = list(lib.GEMMA3_ATTENTION_PATTERN) * (config.num_hidden_layers // 6 + 1)
    expected = ["sliding_attention" if p == lib.AttentionType.LOCAL_SLIDING else "full_attention"
                for p in pattern[: config.num_hidden_layers]]
    _require(where, "layer_types", list(config.layer_types), expected)
    ropes = config.rope_parameters
    local = _rope(ropes["sliding_attention"], where)
    full = _rope(ropes["full_attention"], where)
    for name, found in (("sliding_attention", local), ("full_attention", full)):
        if found.kind not in ("default", "linear"):
            raise UnsupportedModelError(f"{where}: rope_parameters.{name}.rope_type {found.kind!r}; Gemma 3 in "
                                        f"Tunix supports default and linear")
    head_dim, q = common["head_dim"], config.query_pre_attn_scalar
    norms = {head_dim: lib.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM,
             common["embed_dim"] // common["num_heads"]:
                 lib.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS}
    if q not in norms:
        raise UnsupportedModelError(f"{where}: query_pre_attn_scalar={q} is neither head_dim ({head_dim}) nor "
                                    f"hidden_size / num_attention_heads")
    return lib.ModelConfig(**common, num_embed=vocab, sliding_window_size=config.sliding_window,
                           local_base_frequency=local.theta, global_base_frequency=full.theta,
                           local_scale_factor=local.factor if local.kind == "linear" else 1.0,
                           global_scale_factor=full.factor if full.kind == "linear" else 1.0,
                           query_pre_attn_norm=norms[q], param_dtype=dtype), None


def _qwen2(config, common, vocab, tied, dtype, where) -> tuple[Any, None]:
    from tunix.models.qwen2 import model as lib

    rope = _rope(config.rope_parameters, where)
    _require(where, "rope_parameters.rope_type", rope.kind, "default")  # Tunix's Qwen 2 rotates with theta only
    _require(where, "use_sliding_window", bool(getattr(config, "use_sliding_window", False)), False)
    return lib.ModelConfig(**common, vocab_size=vocab, rope_theta=rope.theta, norm_eps=config.rms_norm_eps,
                           use_tied_embedding=tied, dtype=dtype, param_dtype=dtype), None


def _qwen3(config, common, vocab, tied, dtype, where) -> tuple[Any, rope_lib.Rope | None]:
    from tunix.models.qwen3 import model as lib

    _require(where, "attention_bias", bool(getattr(config, "attention_bias", False)), False)
    rope = _rope(config.rope_parameters, where)
    moe = {}
    if getattr(config, "num_experts", None):
        _require(where, "mlp_only_layers", list(getattr(config, "mlp_only_layers", []) or []), [])
        _require(where, "decoder_sparse_step", getattr(config, "decoder_sparse_step", 1), 1)
        moe = {"num_experts": config.num_experts, "num_experts_per_tok": config.num_experts_per_tok,
               "hidden_dim": config.moe_intermediate_size}
    return lib.ModelConfig(**{**common, **moe}, vocab_size=vocab, rope_theta=rope.theta,
                           norm_eps=config.rms_norm_eps, use_tied_embedding=tied, dtype=dtype,
                           param_dtype=dtype), None if rope.is_tunix_default else rope


def _llama3(config, common, vocab, tied, dtype, where) -> tuple[Any, rope_lib.Rope | None]:
    from tunix.models.llama3 import model as lib

    for field in ("attention_bias", "mlp_bias"):
        _require(where, field, bool(getattr(config, field, False)), False)
    _require(where, "hidden_act", config.hidden_act, "silu")
    rope = _rope(config.rope_parameters, where)
    # Llama 3 in Tunix has no dtype fields: it computes in the dtype of the loaded weights.
    return lib.ModelConfig(**common, vocab_size=vocab, rope_theta=rope.theta, norm_eps=config.rms_norm_eps,
                           weight_tying=tied), None if rope.is_tunix_default else rope


def create(folder: Path, kind: str, config: Any, *, rope: rope_lib.Rope | None, mesh: Any, dtype: Any) -> Any:
    """The Tunix model of a folder, each weight placed on `mesh` as it is read (no whole copy on one device)."""
    loader = importlib.import_module(LOADERS[kind])
    model = loader.create_model_from_safe_tensors(str(folder), config, mesh=mesh, dtype=dtype)
    return rope_lib.fix(model, rope) if rope is not None else model


def generation_config(folder: Path) -> dict[str, Any]:
    """A folder's generation_config.json ({} when absent)."""
    path = folder / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def stop_ids(folder: Path, tokenizer: Any, end_of_turn: str) -> tuple[int, ...]:
    """Where a turn ends: EOS, generation_config.json's eos_token_id(s), and the end-of-turn token."""
    found = generation_config(folder).get("eos_token_id")
    ids = [tokenizer.eos_id(), *(found if isinstance(found, list) else [found] if found is not None else [])]
    end = tokenizer.piece_to_id(end_of_turn) if end_of_turn else None
    if end is not None and end != tokenizer.unk_id():
        ids.append(end)
    return tuple(dict.fromkeys(int(i) for i in ids))
