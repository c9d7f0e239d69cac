"""The eval stage: held-out accuracy and format compliance of the student before SFT, after SFT, after GRPO.

Held-out problems are `eval.sets` when given (procedural generators with their own seed, Hub
test splits), else the GRPO validation split of the build stage. Each model answers every
problem greedily in the student's chat template, stopping at `</answer>` or the end of its
turn, and is scored by `training.rewards.verdicts`: the same format check and answer verdict
the curation filter and the GRPO reward use. With `eval.pass_k` > 1 it also draws k samples at
`eval.temperature` per problem for pass@k.

Outputs: `eval/data.parquet` (one row per model, problem and sample), `eval/stats.json`,
and `eval/eval.json` ({"base": {"accuracy", "format", "n"}, "sft": ..., "grpo": ..., "set",
"missing"}), a view of the stats rewritten after every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from curation import sources
from curation.sources import procedural
from machinery import formats, store
from machinery.config import Config, HubSource, ProceduralSource
from machinery.schema import REJECT_COLUMNS
from models import registry
from training import model_card, rewards
from training.export import MODEL_DIR

logger = logging.getLogger(__name__)

STAGE = "eval"
MODELS = ("base", "sft", "grpo")
ADAPTER_STAGES = ("sft", "grpo")
EVAL_JSON = "eval.json"
ANSWER_END = "</answer>"

# (prompts, temperature, seed) -> one continuation per prompt; temperature 0 is greedy.
Generate = Callable[[list[str], float, int], list[Any]]
# (run_dir, stage or None for the base model, config) -> models.registry.LoadedModel
Loader = Callable[[Path, str | None, Config], Any]
# (loaded model, config, label) -> Generate
DecoderFactory = Callable[[Any, Config, str], Generate]

ROW_SCHEMA = {"model": pl.String, "sample_idx": pl.Int32, "greedy": pl.Boolean, "problem_id": pl.String,
              "source": pl.String, "gold": pl.String, "completion": pl.String, "finish_reason": pl.String,
              "completion_tokens": pl.Int32, "formatted": pl.Boolean, "correct": pl.Boolean}


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """The held-out problems (problem_id, source, problem, gold, meta), what they are, and their hash."""

    problems: pl.DataFrame
    description: dict[str, Any]
    digest: str


@dataclass(kw_only=True)
class EvalStats(store.StageStats):
    """Per-model scores, the models left out, and the held-out set: what eval.json shows."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    held_out: dict[str, Any] = field(default_factory=dict)


def _digest(problems: pl.DataFrame) -> str:
    """Content hash of the held-out problems: part of the stage key."""
    rows = problems.select("problem_id", "source", "problem", "gold", "meta").rows()
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def _as_held_out(kept: pl.DataFrame) -> pl.DataFrame:
    """Problem-schema rows as held-out rows."""
    return kept.select(pl.col("id").alias("problem_id"), "source", "problem", pl.col("answer").alias("gold"), "meta")


def held_out(run_dir: Path, config: Config) -> HeldOut:
    """The problems to evaluate on: `eval.sets`, else the build stage's GRPO validation split."""
    limit = config.eval.limit
    if config.eval.sets:
        parts, described = [], []
        for source in config.eval.sets:
            kept, rejected_rows = sources.load(source, config.seed, limit=limit)
            frame, rejected = _as_held_out(kept), rejected_rows.height
            if rejected:
                logger.warning("eval set %s: %d rows could not be read as problems", _name(source), rejected)
            parts.append(frame)
            described.append({"name": _name(source), "problems": frame.height, "rejected_at_load": rejected})
        problems = pl.concat(parts)
        description = {"kind": "eval.sets", "sets": described}
    else:
        grpo = store.finished(run_dir, "build").read().filter(pl.col("split") == "validation")
        problems = (grpo.head(limit) if limit else grpo).select("problem_id", "source", "problem", "gold", "meta")
        description = {"kind": "validation", "from": "build/data.parquet (GRPO validation split)"}
    if problems.is_empty():
        raise store.StageInputError(f"{run_dir}: no held-out problems ({description['kind']}); "
                                    f"configure eval.sets or build a set with a validation split")
    duplicated = problems.height - problems["problem_id"].n_unique()
    if duplicated:
        raise store.StageInputError(f"{run_dir}: {duplicated} held-out problems appear twice; "
                                    f"eval.sets overlap (same task and seed, or the same Hub split twice)")
    description.update(problems=problems.height, limit=limit, sources=dict(
        sorted(problems.group_by("source").len().rows())), overlap_with_train=_overlap_with_train(run_dir, problems))
    if description["overlap_with_train"]:
        logger.warning("%d held-out problems are also GRPO training problems: accuracy is not held-out accuracy",
                       description["overlap_with_train"])
    return HeldOut(problems=problems, description=description, digest=_digest(problems))


def _name(source: ProceduralSource | HubSource) -> str:
    if isinstance(source, ProceduralSource):
        return f"{procedural.source_name(source.task)} (seed {source.seed})"
    return f"{source.id} [{source.split}]"


def _overlap_with_train(run_dir: Path, problems: pl.DataFrame) -> int | None:
    """Held-out problems also in the GRPO train split (None when there is no build to compare with)."""
    try:
        built = store.finished(run_dir, "build")
    except store.StageInputError:
        return None
    train = built.read().filter(pl.col("split") == "train")["problem_id"]
    return int(problems["problem_id"].is_in(train.implode()).sum())


def adapter_hash(run_dir: Path, stage: str) -> str | None:
    """The adapter hash from a training stage's complete manifest, or None when the stage is not complete."""
    from training.lora import ADAPTER

    try:
        return store.finished(run_dir, stage).hash(ADAPTER)
    except store.StageInputError:
        return None


def end_of_turn(config: Config) -> str:
    """The student's end-of-turn marker, from its chat template (`<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`)."""
    return formats.chat_template(config.student.model, config.student.revision).end_of_turn


def answer_text(text: str, end: str) -> str:
    """A completion as the verdict sees it: without the end-of-turn marker that stopped it."""
    return text[: -len(end)] if text.endswith(end) else text


def decoding(loaded: Any, config: Config, label: str) -> Generate:
    """A Generate over a loaded model (`models.sampling.make_decoder`), eval.batch_size rows decoding at a time."""
    from models.sampling import make_decoder

    decoder = make_decoder(loaded)
    end = end_of_turn(config)  # also a string stop: a vocabulary may lack the token
    stops = loaded.stop_ids or (loaded.tokenizer.eos_id(),)  # EOS, generation_config's, the end of turn

    def generate(prompts: list[str], temperature: float, seed: int) -> list[Any]:
        with tqdm(total=len(prompts), desc=f"eval {label} T={temperature}", unit="answer", dynamic_ncols=True) as bar:
            return decoder.generate(prompts, max_new_tokens=config.eval.max_new_tokens, temperature=temperature,
                                    stop=(ANSWER_END, end), stop_ids=stops, seed=seed, slots=config.eval.batch_size,
                                    on_done=lambda i, generated: bar.update(1))

    return generate


def _students_on_mesh() -> Loader:
    """`training.lora.load_student` with every student read onto one device mesh, made at the first load."""
    from training import lora, mesh

    made: list[Any] = []

    def load(run_dir: Path, stage: str | None, config: Config) -> Any:
        if not made:
            made.append(mesh.create(config.mesh))
        return lora.load_student(run_dir, stage, config, mesh=made[0])

    return load


def score(rows: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """Add `formatted` and `correct` to completion rows, by `rewards.verdicts` on their problem's gold."""
    facts = rows.join(problems.select("problem_id", "meta"), on="problem_id", how="left", maintain_order="left")
    verdict = rewards.verdicts(facts["completion"].to_list(), facts["gold"].to_list(), facts["source"].to_list(),
                               facts["meta"].to_list())
    return rows.with_columns(formatted=pl.Series([f for f, _ in verdict], dtype=pl.Boolean),
                             correct=pl.Series([c for _, c in verdict], dtype=pl.Boolean))


def summarize(rows: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per model: greedy accuracy, format compliance and n; pass@k where sampled rows exist."""
    results: dict[str, dict[str, Any]] = {}
    for model in [m for m in MODELS if m in set(rows["model"])] + sorted(set(rows["model"]) - set(MODELS)):
        mine = rows.filter(pl.col("model") == model)
        greedy = mine.filter(pl.col("greedy"))
        entry: dict[str, Any] = {"accuracy": round(float(greedy["correct"].mean() or 0.0), 4),
                                 "format": round(float(greedy["formatted"].mean() or 0.0), 4), "n": greedy.height}
        sampled = mine.filter(~pl.col("greedy"))
        if sampled.height:
            solved = sampled.group_by("problem_id").agg(pl.col("correct").any())["correct"]
            entry["pass_at_k"] = round(float(solved.mean()), 4)
            entry["k"] = int(sampled["sample_idx"].n_unique())
        results[model] = entry
    return results


def _rows(model: str, problems: pl.DataFrame, generated: list[Any], *, sample_idx: int, greedy: bool,
          end: str) -> pl.DataFrame:
    """Completion rows of one model and one pass over the problems."""
    return pl.DataFrame({
        "model": [model] * problems.height, "sample_idx": [sample_idx] * problems.height,
        "greedy": [greedy] * problems.height, "problem_id": problems["problem_id"], "source": problems["source"],
        "gold": problems["gold"], "completion": [answer_text(g.text, end) for g in generated],
        "finish_reason": [g.finish_reason for g in generated],
        "completion_tokens": [g.completion_tokens for g in generated],
    }, schema={k: v for k, v in ROW_SCHEMA.items() if k not in ("formatted", "correct")})


def evaluate(held: HeldOut, models: Mapping[str, Callable[[], Generate]], config: Config, *,
             missing: list[str]) -> store.StageResult:
    """Generate with each model (made one at a time by its factory) and score every completion."""
    started = time.time()
    problems = held.problems
    prompts = [formats.student_prompt(p, config.student.model, revision=config.student.revision)
               for p in problems["problem"]]
    end = end_of_turn(config)
    parts = []
    for name, make in models.items():
        generate = make()  # one model in memory at a time
        parts.append(_rows(name, problems, generate(prompts, 0.0, config.seed), sample_idx=0, greedy=True, end=end))
        if config.eval.pass_k > 1:
            for s in range(config.eval.pass_k):
                sampled = generate(prompts, config.eval.temperature, config.seed + 1 + s)
                parts.append(_rows(name, problems, sampled, sample_idx=s, greedy=False, end=end))
        del generate
        logger.info("eval: %s answered %d held-out problems", name, problems.height)
    rows = score(pl.concat(parts), problems) if parts else pl.DataFrame(schema=ROW_SCHEMA)
    results = summarize(rows)
    for name, entry in results.items():
        logger.info("eval: %s accuracy %.3f, format %.3f on %d problems", name, entry["accuracy"], entry["format"],
                    entry["n"])
    rejected = pl.DataFrame(schema={**ROW_SCHEMA, **REJECT_COLUMNS})  # no eval row is ever rejected
    stats = EvalStats(rows_in=rows.height, kept=rows.height, rejected=0, seconds=round(time.time() - started, 3),
                      results=results, missing=missing, held_out=held.description)
    return store.StageResult(kept=rows, rejected=rejected, stats=stats)


def report(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The eval.json payload from the stage's stats: per-model scores, the held-out set, missing models."""
    return {**stats["results"], "set": stats["held_out"], "missing": list(stats["missing"])}


def table(eval_json: Mapping[str, Any]) -> str:
    """A markdown table of eval.json: rows base/sft/grpo, columns accuracy, format, n (and pass@k when sampled)."""
    entries = {m: eval_json.get(m) for m in MODELS}
    ks = sorted({e["k"] for e in entries.values() if e and "k" in e})
    header = "| model | accuracy | format | n |" + (f" pass@{ks[0]} |" if ks else "")
    lines = [header, "|---|---:|---:|---:|" + ("---:|" if ks else "")]
    for model, entry in entries.items():
        if not entry:
            lines.append(f"| {model} | not run | | |" + (" |" if ks else ""))
            continue
        line = f"| {model} | {entry['accuracy']:.3f} | {entry['format']:.3f} | {entry['n']} |"
        if ks:
            line += f" {entry['pass_at_k']:.3f} |" if "pass_at_k" in entry else " |"
        lines.append(line)
    return "\n".join(lines)


def read(run_dir: Path) -> dict[str, Any] | None:
    """A run's eval.json, or None when the eval stage has not written one."""
    path = run_dir / STAGE / EVAL_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def markdown(run_dir: Path) -> str | None:
    """A run's eval table (see `table`), or None when the eval stage has not written eval.json."""
    found = read(run_dir)
    return table(found) if found is not None else None


def run(run_dir: Path, config: Config, *, force: bool = False, load: Loader | None = None,
        decoder: DecoderFactory | None = None) -> store.Manifest:
    """Run the eval stage on `run_dir`: base, SFT and GRPO students on the held-out set.

    Writes eval.json and, when the GRPO stage is complete, the exported model's card
    (`grpo/model/README.md`). `load` and `decoder` default to the trained students
    (`training.lora.load_student`, read onto the device mesh) and `decoding`.
    """
    load = load or _students_on_mesh()
    decoder = decoder or decoding
    held = held_out(run_dir, config)
    adapters = {stage: adapter_hash(run_dir, stage) for stage in ADAPTER_STAGES}
    missing = [stage for stage, digest in adapters.items() if digest is None]
    if missing:
        logger.info("eval: no complete %s stage in %s; evaluating without it", " or ".join(missing), run_dir)

    def factory(name: str) -> Callable[[], Generate]:
        return lambda: decoder(load(run_dir, None if name == "base" else name, config), config, name)

    models = {name: factory(name) for name in MODELS if name not in missing}
    inputs = {"held_out": held.digest, **{stage: digest or "missing" for stage, digest in adapters.items()}}
    stage_config = {**config.eval.model_dump(mode="json"), "seed": config.seed, "dtype": config.student.dtype,
                    "student": registry.identity(config.student.model, revision=config.student.revision)}
    card = run_dir / "grpo" / MODEL_DIR / model_card.README
    carded = "grpo" not in missing

    def compute() -> store.StageResult:
        result = evaluate(held, models, config, missing=missing)
        if carded:
            payload = report(dataclasses.asdict(result.stats))
            model_card.render(run_dir, config, payload, table(payload)).save(card)
        return result

    manifest = store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, force=force, compute=compute,
                               outputs=(f"../grpo/{MODEL_DIR}/{model_card.README}",) if carded else ())
    stats = json.loads((run_dir / STAGE / store.STATS).read_text())
    store.write_json(report(stats), run_dir / STAGE / EVAL_JSON)
    return manifest
