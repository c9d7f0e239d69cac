"""Small random models in the Hugging Face layout, one per Tunix family, in a temporary Hub cache.

Each is what `snapshot_download` would leave: config.json with the family's architecture
and real-model settings (Llama 3.2's rope scaling, Gemma 3 4B's linear global rope and
sliding window, Qwen 3's head_dim wider than hidden/heads), safetensors under the family's
exact Hugging Face tensor names, a byte-level tokenizer.json with the family's special
tokens, tokenizer_config.json with a chat template, and generation_config.json. `install`
puts one under `models--org--name/snapshots/<commit>/` with `refs/main`, so the id loads
with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 320  # embedding rows: 256 byte tokens, the specials, then unused rows (as real models pad)
LAYERS = 2
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 4, 2, 16

QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA_TEMPLATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- '<|eot_id|>' }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}")


@dataclass(frozen=True, kw_only=True)
class Family:
    """What makes one family's folder: config, specials (in id order after the bytes), template, roles."""

    name: str
    config: dict[str, Any]
    specials: tuple[str, ...]
    roles: dict[str, str]  # bos_token / eos_token / pad_token -> token
    template: str
    generation_eos: tuple[str, ...]
    norm_offset: float = 1.0  # RMSNorm weights near 1 (Gemma stores 1 + w: near 0)
    extra: dict[str, Any] = field(default_factory=dict)


def _common(**overrides) -> dict[str, Any]:
    return {"hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
            "rms_norm_eps": 1e-6, "torch_dtype": "float32", **overrides}


FAMILIES = {
    "qwen2": Family(
        name="qwen2",
        config=_common(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1_000_000.0,
                       max_position_embeddings=4096, hidden_act="silu", use_sliding_window=False,
                       sliding_window=4096, max_window_layers=21, tie_word_embeddings=False),
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        roles={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        template=QWEN_TEMPLATE, generation_eos=("<|im_end|>", "<|endoftext|>")),
    "qwen3": Family(
        name="qwen3",
        # head_dim 32 with hidden 64 and 4 heads: wider than hidden / heads, as in Qwen3-0.6B (128 vs 64);
        # theta 5e6 as in Qwen3-4B-Instruct-2507, which Tunix's Qwen 3 would ignore.
        config=_common(architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=32, rope_theta=5_000_000.0,
                       max_position_embeddings=4096, hidden_act="silu", attention_bias=False,
                       tie_word_embeddings=True),
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        roles={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        template=QWEN_TEMPLATE, generation_eos=("<|im_end|>", "<|endoftext|>")),
    "llama3": Family(
        name="llama3",
        # Llama 3.2's rope: theta 500,000 and "llama3" scaling, factor 32
        config=_common(architectures=["LlamaForCausalLM"], model_type="llama", head_dim=HEAD_DIM,
                       rope_theta=500_000.0, max_position_embeddings=131072, hidden_act="silu",
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       attention_bias=False, mlp_bias=False, tie_word_embeddings=True, rms_norm_eps=1e-5),
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|finetune_right_pad_id|>"),
        roles={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        template=LLAMA_TEMPLATE, generation_eos=("<|end_of_text|>", "<|eot_id|>")),
    "gemma3": Family(
        name="gemma3",
        # 6 layers: 5 sliding (window 8) and 1 global with Gemma 3 4B's linear rope factor 8
        config=_common(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", num_hidden_layers=6,
                       head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=8, rope_theta=1_000_000.0,
                       rope_local_base_freq=10_000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                       max_position_embeddings=32768, hidden_activation="gelu_pytorch_tanh",
                       final_logit_softcapping=None, attn_logit_softcapping=None, sliding_window_pattern=6),
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        roles={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        template=GEMMA_TEMPLATE, generation_eos=("<eos>", "<end_of_turn>"), norm_offset=0.0),
}


def token_ids(family: Family) -> dict[str, int]:
    """Every token's id: Gemma's specials come first (pad 0, eos 1, bos 2), Qwen's and Llama's after the bytes."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    order = [*family.specials, *chars] if family.name == "gemma3" else [*chars, *family.specials]
    return {token: i for i, token in enumerate(order)}


def tokenizer_json(family: Family) -> str:
    """A byte-level BPE tokenizer.json: one token per byte and the family's special tokens, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = token_ids(family)
    specials = family.specials
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(specials))
    return tokenizer.to_str()


def _tensors(family: Family, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random weights under the family's Hugging Face names, (out, in) as PyTorch stores them."""
    config = family.config
    hidden, head_dim = config["hidden_size"], config.get("head_dim", HIDDEN // HEADS)
    q_out, kv_out = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim

    def dense(out: int, inp: int) -> np.ndarray:
        return rng.normal(0.0, 1.0 / np.sqrt(inp), (out, inp)).astype(np.float32)

    def norm(size: int) -> np.ndarray:
        return (family.norm_offset + rng.normal(0.0, 0.1, size)).astype(np.float32)

    # Small embeddings: a tied head then gives logits of order 1, as in a trained model.
    out = {"model.embed_tokens.weight": rng.normal(0.0, 0.1, (VOCAB, hidden)).astype(np.float32),
           "model.norm.weight": norm(hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": dense(q_out, hidden), p + "self_attn.k_proj.weight": dense(kv_out, hidden),
                p + "self_attn.v_proj.weight": dense(kv_out, hidden), p + "self_attn.o_proj.weight": dense(hidden, q_out),
                p + "mlp.gate_proj.weight": dense(INTERMEDIATE, hidden),
                p + "mlp.up_proj.weight": dense(INTERMEDIATE, hidden),
                p + "mlp.down_proj.weight": dense(hidden, INTERMEDIATE),
                p + "input_layernorm.weight": norm(hidden), p + "post_attention_layernorm.weight": norm(hidden)}
        if family.name == "qwen2":  # Qwen 2 always has q/k/v biases
            out |= {p + f"self_attn.{n}_proj.bias": rng.normal(0.0, 0.1, size).astype(np.float32)
                    for n, size in (("q", q_out), ("k", kv_out), ("v", kv_out))}
        if family.name in ("qwen3", "gemma3"):  # q/k norms over head_dim
            out |= {p + "self_attn.q_norm.weight": norm(head_dim), p + "self_attn.k_norm.weight": norm(head_dim)}
        if family.name == "gemma3":
            out |= {p + "pre_feedforward_layernorm.weight": norm(hidden),
                    p + "post_feedforward_layernorm.weight": norm(hidden)}
    if not config.get("tie_word_embeddings", family.name == "gemma3"):
        out["lm_head.weight"] = dense(VOCAB, hidden)
    return out


def write(family_name: str, folder: Path, *, seed: int = 0) -> Path:
    """Write one family's small random model into `folder` (created); returns it."""
    from safetensors.numpy import save_file

    family = FAMILIES[family_name]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(family, np.random.default_rng(seed)), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    ids = token_ids(family)
    (folder / "config.json").write_text(json.dumps({**family.config, **{
        f"{role.removesuffix('_token')}_token_id": ids[token] for role, token in family.roles.items()
        if role in ("bos_token", "eos_token", "pad_token")}}, indent=2))
    (folder / "tokenizer.json").write_text(tokenizer_json(family))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **family.roles, "chat_template": family.template, "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    generation = {"eos_token_id": [ids[t] for t in family.generation_eos]}
    if "bos_token" in family.roles:
        generation["bos_token_id"] = ids[family.roles["bos_token"]]
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder


def install(cache: Path, hub_id: str, family_name: str, *, seed: int = 0) -> Path:
    """Put a family's model into a Hugging Face cache under `hub_id` (huggingface_hub's layout); its folder."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{hub_id}:{family_name}:{seed}".encode()).hexdigest()
    folder = write(family_name, repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return folder
