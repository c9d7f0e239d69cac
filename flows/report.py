"""What a finished run says in the terminal: card paths, the eval table, the final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path


def _stats(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "stats.json").read_text())


def eval_table(run_dir: Path) -> str:
    """The held-out accuracy table of a run, or a line saying it has none yet."""
    from training import evaluate

    path = run_dir / "eval" / "eval.json"
    if not path.is_file():
        return f"no evaluation yet ({path} is missing)"
    return evaluate.table(json.loads(path.read_text()))


def stage_line(stage: str, run_dir: Path) -> str:
    """A short summary of a finished cards, sft, grpo or eval stage."""
    if stage == "cards":
        from data_cards import cards

        return cards.summary(run_dir)
    if stage == "eval":
        return eval_table(run_dir)
    stats = _stats(run_dir, stage)
    return (f"{stage}: {stats['steps']} steps on {stats['kept']} of {stats['rows_in']} rows "
            f"({stats['rejected']} rejected: {stats['reasons'] or 'none'}) in {stats['seconds']:.0f} s "
            f"-> {run_dir / stage}")


def final(run_dir: Path) -> str:
    """The closing summary of `distillery run` and `make run`."""
    lines = [f"run folder: {run_dir}",
             f"SFT card: {run_dir / 'cards' / 'sft' / 'README.md'}",
             f"GRPO card: {run_dir / 'cards' / 'grpo' / 'README.md'}",
             "", eval_table(run_dir), ""]
    for stage in ("sft", "grpo"):
        if (run_dir / stage / "stats.json").is_file():
            lines.append(stage_line(stage, run_dir))
    model = run_dir / "grpo" / "model"
    lines.append(f"final checkpoint: {run_dir / 'grpo' / 'checkpoints'}; merged model (safetensors): {model}")
    return "\n".join(lines)
