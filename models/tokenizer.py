"""Tokenizers of Hugging Face folders behind the sentencepiece-style methods the pipeline calls.

Gemma folders ship a sentencepiece `tokenizer.model`, which is used as is. Qwen and Llama ship
only `tokenizer.json` (Hugging Face's Rust `tokenizers`); `HfTokenizer` wraps it with
`encode` (no BOS: callers prepend `bos_prefix`), `decode`, `bos_id`, `eos_id`, `pad_id`,
`unk_id`, `piece_to_id`, `id_to_piece`. The special tokens' roles are not in tokenizer.json:
they come from `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Llama 3 has no pad token; this reserved one never occurs in text, so padding is never mistaken
# for a real token (padding with `<|eot_id|>` would mask every end of turn out of a prompt).
_RESERVED_PADS = ("<|finetune_right_pad_id|>", "<pad>", "<|endoftext|>")


def special_tokens(folder: Path) -> dict[str, str]:
    """`bos_token`, `eos_token`, `pad_token`, `unk_token` of a folder's tokenizer_config.json (those it names)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    found = {}
    for role in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(role)
        if isinstance(value, dict):  # an AddedToken written out: {"content": "<eos>", ...}
            value = value.get("content")
        if isinstance(value, str) and value:
            found[role] = value
    return found


class HfTokenizer:
    """A `tokenizers.Tokenizer` with the special tokens' roles, seen as a sentencepiece-like processor."""

    def __init__(self, tokenizer: Any, special: dict[str, str], *, source: str = "tokenizer.json"):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.source = source
        self.special = dict(special)
        ids = {role: tokenizer.token_to_id(token) for role, token in special.items()}
        missing = [f"{role}={special[role]!r}" for role, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{source}: special tokens not in the vocabulary: {', '.join(missing)}")
        if "eos_token" not in ids:
            raise ValueError(f"{source}: tokenizer_config.json names no eos_token")
        self._bos, self._eos, self._unk = ids.get("bos_token"), ids["eos_token"], ids.get("unk_token")
        pad = ids.get("pad_token")
        if pad is None:
            pad = next((i for t in _RESERVED_PADS if (i := tokenizer.token_to_id(t)) is not None), self._eos)
        self._pad = pad

    @classmethod
    def from_folder(cls, folder: Path) -> HfTokenizer:
        """The folder's tokenizer.json with the roles its tokenizer_config.json gives."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), special_tokens(folder),
                   source=str(folder / "tokenizer.json"))

    def encode(self, text: str) -> list[int]:
        """Token ids of text, special tokens written in it included, without BOS."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; special tokens stay in the text (as `<end_of_turn>` does with sentencepiece)."""
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def bos_id(self) -> int | None:
        """The begin-of-sequence id, or None when the model has none (Qwen)."""
        return self._bos

    def eos_id(self) -> int:
        """The end-of-sequence id."""
        return self._eos

    def pad_id(self) -> int:
        """The padding id: the pad token, else a reserved token that never occurs in text, else EOS."""
        return self._pad

    def unk_id(self) -> int | None:
        """The unknown-token id (None for byte-level vocabularies, which have none)."""
        return self._unk

    def piece_to_id(self, piece: str) -> int | None:
        """The id of one token, or `unk_id()` when the vocabulary lacks it."""
        found = self._tok.token_to_id(piece)
        return self._unk if found is None else found

    def id_to_piece(self, index: int) -> str | None:
        """The token of an id."""
        return self._tok.id_to_token(index)

    def get_piece_size(self) -> int:
        """The vocabulary size, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)


def bos_prefix(tokenizer: Any) -> list[int]:
    """[BOS] when the tokenizer has one, else [] (sentencepiece says -1, HfTokenizer None)."""
    bos = tokenizer.bos_id()
    return [] if bos is None or bos < 0 else [bos]


def load(folder: Path) -> Any:
    """A folder's tokenizer: sentencepiece `tokenizer.model` when present, else `tokenizer.json`."""
    if (folder / "tokenizer.model").is_file():
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_proto=(folder / "tokenizer.model").read_bytes())
    if (folder / "tokenizer.json").is_file():
        return HfTokenizer.from_folder(folder)
    raise FileNotFoundError(f"{folder}: no tokenizer.model or tokenizer.json")
