"""What a finished run says in the terminal: card paths, the eval table, the final checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from machinery import stats as stage_stats
from machinery import store


def _stats(run_dir: Path, stage: str) -> Any:
    """A finished stage's stats.json, read as the typed record that stage writes (`machinery.stats`)."""
    if stage in ("sft", "grpo"):  # imported only when asked: the trainers are slow to import
        from training import grpo, sft

        record: type[store.StageStats] = {"sft": sft.SftStats, "grpo": grpo.GrpoStats}[stage]
    else:
        from data_cards.facts import RECORDS

        record = RECORDS[stage]
    return stage_stats.read(run_dir, stage, record)


def _reasons(stats: store.StageStats) -> str:
    """Reject reasons as "n reason, ..." for a one-line summary."""
    return ", ".join(f"{n} {r}" for r, n in stats.reasons.items()) or "none"


def _bill(figures: dict[str, Any], cost_usd: float | None, cpu_s: float | None) -> str:
    """Billed requests and tokens, then dollars (or CPU-seconds), for a one-line summary."""
    from curation.teacher import dollars

    tokens = (f"{figures.get('prompt_tokens', 0):,.0f} prompt + {figures.get('completion_tokens', 0):,.0f} "
              f"completion tokens")
    if cpu_s is not None and cost_usd is None:  # the embedded teacher sends no request: its cost is CPU time
        return f"{tokens} decoded on this machine, {cpu_s:.1f} CPU-s"
    billed = figures.get("billed_requests", figures.get("billed", 0))
    spent = (f", {dollars(cost_usd)}" if cost_usd is not None else f", {cpu_s:.1f} CPU-s" if cpu_s is not None
             else " (no price set)")
    return f"{billed:,.0f} requests, {figures.get('retries', 0):,.0f} retries, {tokens}{spent}"


def eval_table(run_dir: Path) -> str:
    """The held-out accuracy table of a run, or a line saying it has none yet."""
    from training import evaluate

    missing = run_dir / evaluate.STAGE / evaluate.EVAL_JSON
    return evaluate.markdown(run_dir) or f"no evaluation yet ({missing} is missing)"


def model_card_lines(run_dir: Path) -> str:
    """Where the exported model's card is, and its eval table; or a line saying eval has not written it."""
    from training import export, model_card

    card = run_dir / "grpo" / export.MODEL_DIR / model_card.README
    if not card.is_file():
        return "model card: not written yet (the eval stage writes grpo/model/README.md)"
    return f"model card: {card}\n{eval_table(run_dir)}"


def stage_line(stage: str, run_dir: Path) -> str:
    """What a finished stage produced, in a line or a few, from its stats.json."""
    if stage == "cards":
        from data_cards import cards

        return cards.summary(run_dir)
    if stage == "eval":
        return eval_table(run_dir)
    stats = _stats(run_dir, stage)
    data = run_dir / stage / "data.parquet"
    if stage == "pull":
        return f"pull: {stats.kept} problems kept, {stats.rejected} rejected of {stats.rows_in} -> {data}"
    if stage == "dedup":
        lines = [f"dedup: {stats.kept} problems kept of {stats.rows_in}; rejected: {_reasons(stats)}; "
                 f"LSH {stats.bands} bands x {stats.rows_per_band} rows -> {data}"]
        lines += [f"  contamination vs {name} ({count} items): {stats.contaminated_by.get(name, 0)} "
                  f"training problems" for name, count in stats.eval_items.items()]
        return "\n".join(lines)
    if stage == "generate":
        return (f"generate: {stats.kept} samples of {stats.rows_in} ({stats.from_cache} from the request "
                f"cache, {stats.requests_sent} requests sent), {stats.rejected} teacher errors -> {data}\n"
                f"  teacher cost: {_bill(dataclasses.asdict(stats), stats.cost_usd, stats.cpu_s)} in {stats.seconds:.0f} s")
    if stage == "filter":
        judged = (f"\n  judge cost: {_bill(stats.judge, stats.judge.get('cost_usd'), None)} in "
                  f"{stats.judge.get('seconds', 0):.0f} s ({stats.judge.get('from_cache', 0):.0f} from its cache)"
                  if stats.judge else "")
        return (f"filter: {stats.kept} traces kept of {stats.rows_in} for {stats.problems_with_a_trace}/"
                f"{stats.problems} problems; mean pass rate {stats.mean_pass_rate:.2f}; rejected: "
                f"{_reasons(stats)} -> {data}{judged}")
    if stage == "build":
        return (f"build: SFT {stats.sft_rows['train']} train / {stats.sft_rows['validation']} validation "
                f"traces; GRPO {stats.grpo_rows['train']} train / {stats.grpo_rows['validation']} validation "
                f"problems of {stats.rows_in} (left out: {_reasons(stats)}) -> {run_dir / stage}")
    return (f"{stage}: {stats.steps} steps on {stats.kept} of {stats.rows_in} rows "
            f"({stats.rejected} rejected: {_reasons(stats)}) in {stats.seconds:.0f} s -> {run_dir / stage}")


def final(run_dir: Path) -> str:
    """The closing summary of `distillery run` and `make run`."""
    lines = [f"run folder: {run_dir}",
             f"SFT data card: {run_dir / 'cards' / 'sft' / 'README.md'}",
             f"GRPO data card: {run_dir / 'cards' / 'grpo' / 'README.md'}",
             model_card_lines(run_dir), ""]
    # What the run's requests cost: the teacher's bill, then the judge's when there was one
    lines += [line for stage in ("generate", "filter") if (run_dir / stage / store.STATS).is_file()
              for line in stage_line(stage, run_dir).splitlines()[1:]]
    for stage in ("sft", "grpo"):
        if (run_dir / stage / store.STATS).is_file():
            lines.append(stage_line(stage, run_dir))
    model = run_dir / "grpo" / "model"
    lines.append(f"final checkpoint: {run_dir / 'grpo' / 'checkpoints'}; merged model (safetensors): {model}")
    return "\n".join(lines)
