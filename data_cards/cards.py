"""The cards stage: one data card per built set, skipped when nothing it reads has changed."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from data_cards import facts as card_facts
from data_cards.render import SETS, render_set
from machinery import store

logger = logging.getLogger(__name__)

STAGE = "cards"


def run(run_dir: Path, *, seed: int, force: bool = False) -> store.Manifest:
    """Render cards/{sft,grpo}/ from the stage files of `run_dir`."""
    inputs = {stage: store.finished(run_dir, stage).hash() for stage, _ in card_facts.FUNNEL}
    config_text = card_facts.curation_config(run_dir)
    if config_text is not None:
        inputs["config"] = hashlib.sha256(config_text.encode()).hexdigest()
    stage_dir = run_dir / STAGE
    key = store.stage_key({"seed": seed}, inputs)
    existing = None if force else store.complete_manifest(stage_dir, key)
    if existing is not None:
        logger.info("cards: skipped, complete cards with key %s already in %s", key[:12], stage_dir)
        return existing
    started = time.time()
    (stage_dir / store.MANIFEST).unlink(missing_ok=True)
    facts = card_facts.gather(run_dir)
    for which in SETS:
        render_set(run_dir, facts, which, seed=seed)
    outputs = [str(p.relative_to(stage_dir)) for p in sorted(stage_dir.rglob("*"))
               if p.is_file() and p.name != store.MANIFEST]
    return store.finish_stage(stage_dir, stage=STAGE, key=key, config={"seed": seed}, inputs=inputs, outputs=outputs,
                              counts={"cards": len(SETS)}, started=started)


def summary(run_dir: Path) -> str:
    """A one-screen terminal summary of a run's data cards."""
    lines = []
    for which in SETS:
        card_path = run_dir / STAGE / which / "README.md"
        if not card_path.is_file():
            raise store.StageInputError(f"no card at {card_path}; run `distillery cards --run {run_dir}` first")
        lines.append(f"{which.upper()} card: {card_path}")
    card = json.loads((run_dir / STAGE / "sft" / "card.json").read_text())
    grpo = json.loads((run_dir / STAGE / "grpo" / "card.json").read_text())
    facts = card["facts"]
    lines.append(f"dataset {facts['dataset']} {facts['version']}; SFT {card['sizes']['train']} train / "
                 f"{card['sizes']['validation']} val traces; GRPO {grpo['sizes']['train']} train / "
                 f"{grpo['sizes']['validation']} val problems")
    lines.append("sources: " + ", ".join(f"{s['name']} ({s['license']})" for s in facts["sources"]))
    lines.append(f"{'stage':<9} {'unit':<14} {'in':>7} {'out':>7}  rejected by reason")
    for f in facts["funnel"]:
        reasons = ", ".join(f"{r} {n}" for r, n in f["reasons"].items()) or "-"
        lines.append(f"{f['stage']:<9} {f['unit']:<14} {f['in']:>7} {f['out']:>7}  {reasons[:60]}")
    dedup = facts["dedup"]
    contamination = ", ".join(f"{name}: {dedup['contaminated_by'].get(name, 0)} of {n}"
                              for name, n in dedup["eval_items"].items()) or "NOT decontaminated (no eval sets)"
    lines.append(f"contamination: {contamination}")
    teacher = facts["teacher"]
    lines.append(f"teacher: {teacher['model']} ({teacher['backend']}), n={teacher['n']}, "
                 f"T={teacher['temperature']}; mean pass rate {facts['filter']['mean_pass_rate']:.2f}")
    return "\n".join(lines)
