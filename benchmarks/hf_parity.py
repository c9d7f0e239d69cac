"""By hand, not in CI: do transformers and distillery give the same logits for our exported folders?

Two halves, two environments (transformers runs models only with PyTorch, which the project
does not install):

    # 1. in the project's venv: write each family's small random model, put a random LoRA on it,
    #    fold it in, export it, and save distillery's logits of the exported folder
    python -m benchmarks.hf_parity ours /tmp/parity
    # 2. in a throwaway venv with `pip install torch transformers sentencepiece safetensors`:
    python benchmarks/hf_parity.py theirs /tmp/parity

The second prints, per family, transformers' class and the largest logit difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FAMILIES = ("qwen2", "qwen3", "llama3", "gemma3")
IDS = [7, 100, 55, 200, 13, 250, 42, 9, 77, 31, 160, 3, 88, 99, 120, 240, 11, 65, 70, 90] * 3


def ours(root: Path) -> None:
    """Export each family's small model with a random LoRA folded in; save distillery's logits of the export."""
    import jax.numpy as jnp
    import numpy as np

    from machinery.config import LoraConfig
    from models import registry
    from tests.support import hf_models
    from training import export, lora

    for family in FAMILIES:
        loaded = registry.load(str(hf_models.write(family, root / "source" / family)))
        config = LoraConfig(rank=4, alpha=8.0)
        adapted = lora.apply(loaded.model, config, seed=1)
        rng = np.random.default_rng(1)
        lora.set_params(adapted, {k: rng.normal(0, 0.3, v.shape).astype(np.float32) if k.endswith("lora_b") else v
                                  for k, v in lora.params(adapted).items()})
        export.write(loaded, lora.fold(loaded.model, adapted, config), root / family, dtype="float32")
        again = registry.load(str(root / family))
        length = len(IDS)
        logits = again.model(jnp.asarray([IDS], dtype=jnp.int32), jnp.arange(length)[None], None,
                             jnp.tril(jnp.ones((length, length), dtype=bool))[None])[0][0]
        np.save(root / f"{family}.npy", np.asarray(logits, np.float32))
    (root / "ids.json").write_text(json.dumps(IDS))


def theirs(root: Path) -> None:
    """Load each exported folder with transformers (PyTorch) and compare its logits with distillery's."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    ids = json.loads((root / "ids.json").read_text())
    for family in FAMILIES:
        model = AutoModelForCausalLM.from_pretrained(str(root / family), dtype=torch.float32,
                                                     attn_implementation="eager")
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].numpy()
        expected = np.load(root / f"{family}.npy")
        print(f"{family}: {type(model).__name__}, max |logit difference| {np.abs(logits - expected).max():.2e} "
              f"(largest logit {np.abs(expected).max():.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=("ours", "theirs"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    (ours if args.side == "ours" else theirs)(args.folder)


if __name__ == "__main__":
    main()
