"""Convert a Gemma 3 GGUF (llama.cpp's format) into a Hugging Face-style safetensors folder.

What the conversion must undo, measured on the embedded Gemma 3 270M Q4_K_M GGUF:
- llama.cpp's converter adds 1 to every Gemma RMSNorm weight; left in, perplexity was 24
  million. Gemma needs no q/k permutation; embeddings are tied (no separate head).
- Tunix's safetensors loader reads a file with its first tensor's dtype: write ONE
  float32 file.
- The tokenizer is rebuilt as a sentencepiece ModelProto from the GGUF vocabulary: BPE,
  byte fallback, identity normalizer, no dummy prefix, no whitespace collapsing; the
  whitespace-run pieces are written with U+2581 (as in the original model) and
  `<start_of_turn>`/`<end_of_turn>` are USER_DEFINED, so llama.cpp's ids are reproduced.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# llama.cpp tensor name -> (Hugging Face name, is an RMSNorm weight stored as 1 + w)
_NAMES = {
    "token_embd.weight": ("model.embed_tokens.weight", False),
    "output_norm.weight": ("model.norm.weight", True),
}
_BLOCK_NAMES = {
    "attn_q.weight": ("self_attn.q_proj.weight", False),
    "attn_k.weight": ("self_attn.k_proj.weight", False),
    "attn_v.weight": ("self_attn.v_proj.weight", False),
    "attn_output.weight": ("self_attn.o_proj.weight", False),
    "attn_q_norm.weight": ("self_attn.q_norm.weight", True),
    "attn_k_norm.weight": ("self_attn.k_norm.weight", True),
    "attn_norm.weight": ("input_layernorm.weight", True),
    "post_attention_norm.weight": ("post_attention_layernorm.weight", True),
    "ffn_norm.weight": ("pre_feedforward_layernorm.weight", True),
    "post_ffw_norm.weight": ("post_feedforward_layernorm.weight", True),
    "ffn_gate.weight": ("mlp.gate_proj.weight", False),
    "ffn_up.weight": ("mlp.up_proj.weight", False),
    "ffn_down.weight": ("mlp.down_proj.weight", False),
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
_USER_DEFINED = ("<start_of_turn>", "<end_of_turn>")


def hf_name(gguf_name: str) -> tuple[str, bool]:
    """The Hugging Face name of a llama.cpp tensor, and whether it is a norm weight (+1 stored)."""
    if gguf_name in _NAMES:
        return _NAMES[gguf_name]
    match = _BLOCK.match(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        name, is_norm = _BLOCK_NAMES[match.group(2)]
        return f"model.layers.{match.group(1)}.{name}", is_norm
    raise KeyError(f"unexpected tensor {gguf_name!r} in a Gemma 3 GGUF")


def read_tensors(reader) -> dict[str, np.ndarray]:
    """All tensors dequantized to float32 in (out, in) order, renamed, norms shifted back by 1."""
    from gguf.quants import dequantize

    tensors = {}
    for tensor in reader.tensors:
        name, is_norm = hf_name(tensor.name)
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        values = values.reshape([int(d) for d in reversed(tensor.shape)])  # GGUF lists dims inner first
        tensors[name] = values - 1.0 if is_norm else values
    return tensors


def _field(reader, key: str):
    return reader.fields[key].contents()


def config(reader) -> dict[str, object]:
    """The architecture facts of the GGUF, to check against the Tunix config."""
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise ValueError(f"expected a gemma3 GGUF, got architecture {arch!r}")
    return {
        "num_layers": int(_field(reader, "gemma3.block_count")),
        "embed_dim": int(_field(reader, "gemma3.embedding_length")),
        "hidden_dim": int(_field(reader, "gemma3.feed_forward_length")),
        "num_heads": int(_field(reader, "gemma3.attention.head_count")),
        "num_kv_heads": int(_field(reader, "gemma3.attention.head_count_kv")),
        "head_dim": int(_field(reader, "gemma3.attention.key_length")),
        "sliding_window_size": int(_field(reader, "gemma3.attention.sliding_window")),
        "num_embed": len(reader.fields["tokenizer.ggml.tokens"].data),
        "bos_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_id": int(_field(reader, "tokenizer.ggml.padding_token_id")),
        "unk_id": int(_field(reader, "tokenizer.ggml.unknown_token_id")),
    }


def tokenizer_proto(reader) -> bytes:
    """A serialized sentencepiece ModelProto equivalent to the GGUF's tokenizer."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    facts = config(reader)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    proto = sp.ModelProto()
    proto.trainer_spec.model_type = sp.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = facts["unk_id"], facts["bos_id"]
    proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = facts["eos_id"], facts["pad_id"]
    # sentencepiece finds special ids by piece name, not by the ids above alone.
    proto.trainer_spec.unk_piece, proto.trainer_spec.bos_piece = tokens[facts["unk_id"]], tokens[facts["bos_id"]]
    proto.trainer_spec.eos_piece, proto.trainer_spec.pad_piece = tokens[facts["eos_id"]], tokens[facts["pad_id"]]
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for index, (text, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        # llama.cpp stores runs of spaces with real spaces; sentencepiece pieces use U+2581.
        piece.piece = text.replace(" ", "\u2581") if text.strip(" ") == "" and text else text
        piece.score = float(score)
        if index == facts["unk_id"]:
            piece.type = sp.ModelProto.SentencePiece.UNKNOWN  # sentencepiece needs exactly one
        elif text in _USER_DEFINED:
            piece.type = sp.ModelProto.SentencePiece.USER_DEFINED
        else:
            piece.type = int(kind)
    return proto.SerializeToString()


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Write model.safetensors (float32), tokenizer.model and config.json from a GGUF into out_dir."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = read_tensors(reader)
    # Tunix reads the dtype of the first tensor for the whole file: all are float32 here.
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "tokenizer.model").write_bytes(tokenizer_proto(reader))
    (out_dir / "config.json").write_text(json.dumps({"architecture": "gemma3", **config(reader)}, indent=2))
    logger.info("converted %s -> %s (%d tensors)", gguf_path.name, out_dir, len(tensors))
