"""Rotary embeddings as Hugging Face computes them, for the Tunix families that get them wrong.

Tunix 0.1.7's Llama 3 and Qwen 3 attention call `apply_rope(x, positions, head_dim=...)`
without the config's `rope_theta` (tunix/models/llama3/model.py:352-361,
qwen3/model.py:501-510), so every model rotates with theta 1,000,000, and Llama 3.1/3.2's
`rope_scaling` ("llama3": long wavelengths divided by `factor`, a smooth ramp between) is
never applied. Llama 3.2 has theta 500,000 and factor 32: its logits would be wrong from the
first position on. Qwen 2 passes its theta and is right; Gemma 3 has its own frequencies.

The fix is per model instance: `fix(model, rope)` turns each attention module into a
subclass carrying the model's `Rope` (a static, hashable attribute, so jit and nnx
graphs see it). Tunix's attention looks `apply_rope` up in its module's globals when it
runs, so that name is replaced once by `_dispatch`, which applies the rope of the attention
module running on this thread and behaves exactly as Tunix's for every other model.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import threading
from typing import Any

_active = threading.local()  # the Rope of the attention block running on this thread
_installed: dict[str, Any] = {}  # Tunix model module name -> its original apply_rope
_lock = threading.Lock()


class RopeError(ValueError):
    """A rope_scaling kind this module cannot reproduce."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rope:
    """Hugging Face's rotary parameters (`rope_parameters`): theta and an optional scaling."""

    theta: float
    kind: str = "default"  # "default", "linear" or "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any], where: str) -> Rope:
        """From transformers' `rope_parameters`; RopeError names kinds other than default, linear, llama3."""
        kind = parameters.get("rope_type", parameters.get("type", "default")) or "default"
        if kind not in ("default", "linear", "llama3"):
            raise RopeError(f"{where}: rope_type {kind!r} is not supported (supported: default, linear, llama3)")
        fields = {k: parameters[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings") if parameters.get(k) is not None}
        return cls(theta=float(parameters["rope_theta"]), kind=kind, **fields)

    def inverse_frequencies(self, head_dim: int) -> tuple[float, ...]:
        """Per rotated pair, the angle per position (transformers' `_compute_*_parameters`)."""
        inv = [1.0 / self.theta ** (2 * i / head_dim) for i in range(head_dim // 2)]
        if self.kind == "linear":
            return tuple(f / self.factor for f in inv)
        if self.kind == "default":
            return tuple(inv)
        low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
        high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen > low_wavelen:  # long wavelengths: interpolated
                out.append(f / self.factor)
            elif wavelen < high_wavelen:  # short ones: kept
                out.append(f)
            else:  # in between: a smooth ramp
                smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
                    self.high_freq_factor - self.low_freq_factor)
                out.append((1 - smooth) * f / self.factor + smooth * f)
        return tuple(out)

    @property
    def is_tunix_default(self) -> bool:
        """Whether Tunix's hard-coded rotation (theta 1e6, no scaling) is already this one."""
        return self.kind == "default" and self.theta == 1_000_000


def apply(inputs, positions, head_dim: int, rope: Rope):
    """Rotate (B, T, heads, head_dim) by positions (B, T): first and second halves as pairs (HF and Tunix)."""
    import jax.numpy as jnp

    inv = jnp.asarray(rope.inverse_frequencies(head_dim), dtype=jnp.float32)
    angles = positions[..., None].astype(jnp.float32) * inv[None, None, :]
    sin = jnp.sin(angles)[..., None, :].astype(inputs.dtype)
    cos = jnp.cos(angles)[..., None, :].astype(inputs.dtype)
    first, second = jnp.split(inputs, 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).astype(inputs.dtype)


def _dispatch(module_name: str):
    """The `apply_rope` installed in a Tunix model module: ours inside a fixed attention, Tunix's elsewhere."""
    original = _installed[module_name]

    def apply_rope(inputs, positions, head_dim, rope_theta=1_000_000):
        rope = getattr(_active, "rope", None)
        if rope is None:
            return original(inputs, positions, head_dim, rope_theta)
        return apply(inputs, positions, head_dim, rope)

    return apply_rope


@functools.cache
def _fixed_class(attention_class: type) -> type:
    """A subclass of a Tunix attention class whose block rotates with the instance's `_rope`."""

    def block(self, *args, **kwargs):
        previous, _active.rope = getattr(_active, "rope", None), self._rope
        try:
            return attention_class.block(self, *args, **kwargs)
        finally:
            _active.rope = previous

    return type(attention_class.__name__, (attention_class,), {"block": block, "__module__": __name__})


def fix(model: Any, rope: Rope) -> Any:
    """Make a Tunix Llama 3 or Qwen 3 model rotate with `rope` (in place; returns it)."""
    module_name = type(model.layers[0].attn).__module__
    with _lock:
        if module_name not in _installed:
            module = importlib.import_module(module_name)
            _installed[module_name] = module.apply_rope
            module.apply_rope = _dispatch(module_name)
    for layer in model.layers:
        attention = layer.attn
        if type(attention).__module__ != __name__:  # not fixed yet
            attention.__class__ = _fixed_class(type(attention))
        attention._rope = rope
    return model
