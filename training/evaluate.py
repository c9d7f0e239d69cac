"""The eval stage: held-out accuracy of the student before SFT, after SFT, after GRPO, with its uncertainty.

Held-out problems are `eval.sets` when given (procedural generators with their own seed, Hub
test splits), else the GRPO validation split of the build stage. The dedup stage removes from
training every problem whose text is (nearly) that of a held-out one, so "held-out" holds by
text, not only by id; eval.json counts what it removed and any text overlap left.

Each model answers every problem greedily as it is meant to be asked: the base model with the
teacher's few-shot completion prompt (`curation.teacher.prompts`, stopping at the next
"\nProblem:"), the trained models in the student's chat template. Three scores per model:

- strict accuracy: the completion is one the curation filter's single-completion checks would
  keep (`curation.checks.judge`: format, length, loops, language, steps, verified answer);
- answer accuracy: the model's final answer wherever it wrote it (`answers.final_answer`),
  checked by the same verifier (`curation.verifier`) - an untrained model is not scored 0 for
  ignoring a format it was never taught;
- format rate: the exact `<reasoning>/<answer>` format.

Each with its 95% Wilson interval; consecutive models (base -> sft -> grpo) are compared on
the same problems by the exact McNemar test (`training.significance`). With `eval.pass_k` > 1
it also draws k samples at `eval.temperature` per problem for pass@k (strict).

Outputs: `eval/data.parquet` (one row per model, problem and sample), `eval/stats.json`,
and `eval/eval.json` ({"base": {"accuracy", "accuracy_ci", "answer_accuracy", ..., "n",
"prompt"}, "sft": ..., "grpo": ..., "comparisons", "set", "missing"}), a view of the stats
rewritten after every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from curation import answers, checks, dedup, minhash, sources, verifier
from curation.sources import procedural
from curation.teacher import prompts as teacher_prompts
from machinery import formats, stats, store
from machinery.config import Config, HubSource, ProceduralSource
from machinery.schema import REJECT_COLUMNS
from models import registry
from training import model_card, significance
from training.export import MODEL_DIR
from training.significance import mcnemar, wilson

logger = logging.getLogger(__name__)

STAGE = "eval"
MODELS = ("base", "sft", "grpo")
ADAPTER_STAGES = ("sft", "grpo")
EVAL_JSON = "eval.json"
ANSWER_END = "</answer>"
# How each model is asked (recorded per model in eval.json): the base model as the teacher asks a
# base model, the trained ones as they were trained.
FEW_SHOT, CHAT = "few-shot completion (teacher prompt)", "chat template (student prompt)"
# The rates of eval.json: (key, row column); each gets `<key>_ci`, its 95% Wilson interval.
RATES = (("accuracy", "strict"), ("answer_accuracy", "answer_correct"), ("format", "formatted"))
DIGITS = 4

# (prompts, temperature, seed) -> one continuation per prompt; temperature 0 is greedy.
Generate = Callable[[list[str], float, int], list[Any]]
# (run_dir, stage or None for the base model, config) -> models.registry.LoadedModel
Loader = Callable[[Path, str | None, Config], Any]
# (loaded model, config, label) -> Generate
DecoderFactory = Callable[[Any, Config, str], Generate]

ROW_SCHEMA = {"model": pl.String, "sample_idx": pl.Int32, "greedy": pl.Boolean, "problem_id": pl.String,
              "source": pl.String, "gold": pl.String, "completion": pl.String, "finish_reason": pl.String,
              "completion_tokens": pl.Int32, "formatted": pl.Boolean, "strict": pl.Boolean,
              "verdict": pl.String, "verdict_detail": pl.String, "answer": pl.String, "answer_correct": pl.Boolean}
SCORE_COLUMNS = ("formatted", "strict", "verdict", "verdict_detail", "answer", "answer_correct")


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """The held-out problems (problem_id, source, problem, gold, meta), what they are, and their hash."""

    problems: pl.DataFrame
    description: dict[str, Any]
    digest: str


@dataclass(kw_only=True)
class EvalStats(store.StageStats):
    """Per-model scores, paired comparisons, the models left out, and the held-out set: what eval.json shows."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
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
        sorted(problems.group_by("source").len().rows())),
        overlap_with_train=_overlap_with_train(run_dir, problems, every_split=bool(config.eval.sets)),
        **_decontaminated(run_dir))
    if description["overlap_with_train"]:
        logger.warning("%d held-out problems have the text of a training problem: accuracy is not held-out accuracy",
                       description["overlap_with_train"])
    return HeldOut(problems=problems, description=description, digest=_digest(problems))


def _name(source: ProceduralSource | HubSource) -> str:
    if isinstance(source, ProceduralSource):
        return f"{procedural.source_name(source.task)} (seed {source.seed})"
    return f"{source.id} [{source.split}]"


def _overlap_with_train(run_dir: Path, problems: pl.DataFrame, *, every_split: bool) -> int | None:
    """Held-out problems whose normalized text is a built problem's (None when there is no build to compare with).

    Against both built sets (SFT and GRPO); against their train splits only when the held-out
    set is the validation split itself.
    """
    try:
        built = store.finished(run_dir, "build")
    except store.StageInputError:
        return None
    names = [store.DATA] + ([formats.SFT_SET] if formats.SFT_SET in built.manifest.outputs else [])
    train = pl.concat([built.read(name).select("split", "problem") for name in names])
    if not every_split:
        train = train.filter(pl.col("split") == "train")
    seen = set(minhash.normalize_many(train["problem"].to_list()))
    return sum(text in seen for text in minhash.normalize_many(problems["problem"].to_list()))


def _decontaminated(run_dir: Path) -> dict[str, Any]:
    """How many training problems the dedup stage removed for matching an eval set, in all and per set."""
    if not (run_dir / dedup.STAGE / store.STATS).is_file():
        return {"decontaminated_from_training": None}
    by_set = stats.read(run_dir, dedup.STAGE, dedup.DedupStats).contaminated_by
    return {"decontaminated_from_training": sum(by_set.values()), "decontaminated_by_set": by_set}


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


@dataclass(frozen=True, kw_only=True)
class Asking:
    """How a model is asked: the prompt's style, the answer opening the prompt already wrote, the stop strings."""

    style: str
    prefix: str
    stops: tuple[str, ...]


def asking(model: str, config: Config) -> Asking:
    """The base model as the teacher asks a base model (few-shot text); trained ones in their chat template."""
    end = end_of_turn(config)  # also a string stop: a vocabulary may lack the token
    if model == "base":
        # The few-shot text opens `<reasoning>` for the model, and a base model goes on to write
        # the next "Problem:" after its answer: stop there, as the teacher does.
        return Asking(style=FEW_SHOT, prefix=teacher_prompts.OPEN,
                      stops=(ANSWER_END, *teacher_prompts.COMPLETION_STOPS, end))
    return Asking(style=CHAT, prefix="", stops=(ANSWER_END, end))


def prompts_for(model: str, problems: pl.DataFrame, config: Config) -> list[str]:
    """The prompt text of every held-out problem for one model (see `asking`)."""
    if model == "base":
        return [teacher_prompts.build(problem, source).text
                for problem, source in zip(problems["problem"], problems["source"])]
    return [formats.student_prompt(problem, config.student.model, revision=config.student.revision)
            for problem in problems["problem"]]


def answer_text(text: str, asked: Asking) -> str:
    """A completion as the checks see it: the opening its prompt wrote, without a stop string that ended it.

    `</answer>` stays: it closes the answer block.
    """
    for stop in asked.stops:
        if stop != ANSWER_END and text.endswith(stop):
            text = text[: -len(stop)]
            break
    return asked.prefix + text


def decoding(loaded: Any, config: Config, label: str) -> Generate:
    """A Generate over a loaded model (`models.sampling.make_decoder`), eval.batch_size rows decoding at a time."""
    from models.sampling import make_decoder

    decoder = make_decoder(loaded)
    stop = asking(label, config).stops
    stops = loaded.stop_ids or (loaded.tokenizer.eos_id(),)  # EOS, generation_config's, the end of turn

    def generate(prompts: list[str], temperature: float, seed: int) -> list[Any]:
        with tqdm(total=len(prompts), desc=f"eval {label} T={temperature}", unit="answer", dynamic_ncols=True) as bar:
            return decoder.generate(prompts, max_new_tokens=config.eval.max_new_tokens, temperature=temperature,
                                    stop=stop, stop_ids=stops, seed=seed, slots=config.eval.batch_size,
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


def score(rows: pl.DataFrame, problems: pl.DataFrame, config: Config) -> pl.DataFrame:
    """Add the verdict columns (SCORE_COLUMNS) to completion rows, against their problem's gold.

    `strict`: kept by the filter's single-completion checks (`checks.judge` with `config.filter`,
    less the teacher's token bounds, as for GRPO rollouts: `checks.rollout_config`), `verdict`
    naming the first check failed. `answer_correct`: the final answer wherever written
    (`answers.final_answer`) passes the same verifier the filter's answer check uses.
    """
    facts = rows.join(problems.select("problem_id", "meta"), on="problem_id", how="left", maintain_order="left")
    texts, golds, origins = facts["completion"].to_list(), facts["gold"].to_list(), facts["source"].to_list()
    metas = facts["meta"].to_list()
    deadline = config.filter.check_deadline_s  # per answer check, as the filter stage allows it
    judged = checks.judge(texts, golds, origins, metas, config=checks.rollout_config(config.filter_stage()),
                          tokens=facts["completion_tokens"].to_list(), deadline_s=deadline)
    finals = [answers.final_answer(text) for text in texts]
    todo = [i for i, final in enumerate(finals) if final is not None]
    right = [False] * len(texts)
    # In an answer block, the verifier reads exactly the answer found (its extraction finds the block).
    found = verifier.verdicts([f"<answer>{finals[i]}</answer>" for i in todo], [golds[i] for i in todo],
                              [origins[i] for i in todo], [metas[i] or "{}" for i in todo],
                              deadline_s=deadline, unsafe_tasks=config.filter_stage().unsafe_scorers) if todo else []
    for i, ok in zip(todo, found):
        right[i] = ok is True  # no verdict in time is not a right answer, as in the filter
    return rows.with_columns(
        formatted=pl.Series([v.formatted for v in judged], dtype=pl.Boolean),
        strict=pl.Series([v.reason is None for v in judged], dtype=pl.Boolean),
        verdict=pl.Series([None if v.reason is None else str(v.reason) for v in judged], dtype=pl.String),
        verdict_detail=pl.Series([v.detail or None for v in judged], dtype=pl.String),
        answer=pl.Series(finals, dtype=pl.String), answer_correct=pl.Series(right, dtype=pl.Boolean))


def _models(rows: pl.DataFrame) -> list[str]:
    """The models in rows: base, sft, grpo first, in that order."""
    present = set(rows["model"])
    return [m for m in MODELS if m in present] + sorted(present - set(MODELS))


def summarize(rows: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per model, on greedy rows: each rate of RATES with its 95% Wilson interval and count, and n.

    pass@k (strict: any of k samples kept) where sampled rows exist.
    """
    results: dict[str, dict[str, Any]] = {}
    for model in _models(rows):
        mine = rows.filter(pl.col("model") == model)
        greedy = mine.filter(pl.col("greedy"))
        n = greedy.height
        entry: dict[str, Any] = {}
        for key, column in RATES:
            hits = int(greedy[column].sum())
            low, high = wilson(hits, n)
            entry |= {key: round(hits / n, DIGITS) if n else 0.0, f"{key}_ci": [round(low, DIGITS),
                                                                                  round(high, DIGITS)]}
        entry |= {"counts": {key: int(greedy[column].sum()) for key, column in RATES}, "n": n}
        sampled = mine.filter(~pl.col("greedy"))
        if sampled.height:
            solved = sampled.group_by("problem_id").agg(pl.col("strict").any())["strict"]
            entry["pass_at_k"] = round(float(solved.mean()), DIGITS)
            entry["k"] = int(sampled["sample_idx"].n_unique())
        results[model] = entry
    return results


def compare(rows: pl.DataFrame) -> list[dict[str, Any]]:
    """Exact McNemar tests between consecutive models on the same problems (greedy), strict and answer accuracy.

    Each entry: `from`, `to`, `n`, and per score `b` (problems only `from` solves), `c` (only
    `to` solves) and the two-sided `p`.
    """
    greedy = rows.filter(pl.col("greedy"))
    present = _models(greedy)
    found = []
    for first, second in itertools.pairwise(present):
        a, b = (greedy.filter(pl.col("model") == m).sort("problem_id") for m in (first, second))
        if a["problem_id"].to_list() != b["problem_id"].to_list():
            raise ValueError(f"eval rows: {first} and {second} answered different problems; a paired test needs "
                             f"the same ones ({a.height} and {b.height} rows)")
        entry: dict[str, Any] = {"from": first, "to": second, "n": a.height}
        for key, column in RATES[:2]:
            test = mcnemar(a[column].to_list(), b[column].to_list())
            entry[key] = {"b": test.b, "c": test.c, "p": test.p}
        found.append(entry)
    return found


def _rows(model: str, problems: pl.DataFrame, generated: list[Any], *, sample_idx: int, greedy: bool,
          asked: Asking) -> pl.DataFrame:
    """Completion rows of one model and one pass over the problems."""
    return pl.DataFrame({
        "model": [model] * problems.height, "sample_idx": [sample_idx] * problems.height,
        "greedy": [greedy] * problems.height, "problem_id": problems["problem_id"], "source": problems["source"],
        "gold": problems["gold"], "completion": [answer_text(g.text, asked) for g in generated],
        "finish_reason": [g.finish_reason for g in generated],
        "completion_tokens": [g.completion_tokens for g in generated],
    }, schema={k: v for k, v in ROW_SCHEMA.items() if k not in SCORE_COLUMNS})


def evaluate(held: HeldOut, models: Mapping[str, Callable[[], Generate]], config: Config, *,
             missing: list[str], progress: Callable[[float], None] | None = None) -> store.StageResult:
    """Generate with each model (made one at a time by its factory) and score every completion.

    `progress` gets the fraction of models done (each answers every problem) as each finishes.
    """
    started = time.time()
    problems = held.problems
    parts = []
    for index, (name, make) in enumerate(models.items(), start=1):
        asked, prompts = asking(name, config), prompts_for(name, problems, config)
        generate = make()  # one model in memory at a time
        parts.append(_rows(name, problems, generate(prompts, 0.0, config.seed), sample_idx=0, greedy=True,
                           asked=asked))
        if config.eval.pass_k > 1:
            for s in range(config.eval.pass_k):
                sampled = generate(prompts, config.eval.temperature, config.seed + 1 + s)
                parts.append(_rows(name, problems, sampled, sample_idx=s, greedy=False, asked=asked))
        del generate
        logger.info("eval: %s answered %d held-out problems (%s)", name, problems.height, asked.style)
        if progress is not None:
            progress(index / len(models))
    rows = score(pl.concat(parts), problems, config) if parts else pl.DataFrame(schema=ROW_SCHEMA)
    results = summarize(rows)
    for name, entry in results.items():
        entry["prompt"] = asking(name, config).style
        logger.info("eval: %s strict accuracy %.3f, answer accuracy %.3f, format %.3f on %d problems", name,
                    entry["accuracy"], entry["answer_accuracy"], entry["format"], entry["n"])
    rejected = pl.DataFrame(schema={**ROW_SCHEMA, **REJECT_COLUMNS})  # no eval row is ever rejected
    record = EvalStats(rows_in=rows.height, kept=rows.height, rejected=0, seconds=round(time.time() - started, 3),
                       results=results, comparisons=compare(rows), missing=missing, held_out=held.description)
    return store.StageResult(kept=rows, rejected=rejected, stats=record)


def report(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The eval.json payload from the stage's stats: per-model scores, comparisons, the held-out set, missing models."""
    return {**stats["results"], "comparisons": list(stats.get("comparisons", [])), "set": stats["held_out"],
            "missing": list(stats["missing"])}


def _rate(entry: Mapping[str, Any], key: str) -> str:
    """"0.250 [0.102, 0.494]": a rate and its 95% interval."""
    low, high = entry[f"{key}_ci"]
    return f"{entry[key]:.3f} [{low:.3f}, {high:.3f}]"


def _p(p: float) -> str:
    """A p-value as the table shows it, saying "not significant" at p >= 0.05."""
    return f"{p:.3g}" + (" (not significant)" if p >= significance.SIGNIFICANT else "")


def table(eval_json: Mapping[str, Any]) -> str:
    """eval.json as markdown: per model the three rates with 95% intervals; then the paired tests; then the set."""
    entries = {m: eval_json.get(m) for m in MODELS}
    ks = sorted({e["k"] for e in entries.values() if e and "k" in e})
    header = "| model | prompt | strict accuracy [95% CI] | answer accuracy [95% CI] | format [95% CI] | n |"
    lines = [header + (f" pass@{ks[0]} |" if ks else ""), "|---|---|---:|---:|---:|---:|" + ("---:|" if ks else "")]
    for model, entry in entries.items():
        if not entry:
            lines.append(f"| {model} | not run | | | | |" + (" |" if ks else ""))
            continue
        line = (f"| {model} | {entry.get('prompt', '')} | {_rate(entry, 'accuracy')} | "
                f"{_rate(entry, 'answer_accuracy')} | {_rate(entry, 'format')} | {entry['n']} |")
        if ks:
            line += f" {entry['pass_at_k']:.3f} |" if "pass_at_k" in entry else " |"
        lines.append(line)
    comparisons = eval_json.get("comparisons") or []
    if comparisons:
        lines += ["", "Paired exact McNemar tests on the same problems (b: solved only before, c: only after):", "",
                  "| change | n | strict b / c | strict p | answer b / c | answer p |", "|---|---:|---:|---|---:|---|"]
        lines += [f"| {c['from']} -> {c['to']} | {c['n']} | {c['accuracy']['b']} / {c['accuracy']['c']} | "
                  f"{_p(c['accuracy']['p'])} | {c['answer_accuracy']['b']} / {c['answer_accuracy']['c']} | "
                  f"{_p(c['answer_accuracy']['p'])} |" for c in comparisons]
    held = eval_json.get("set") or {}
    if held:
        lines += ["", (f"Held-out problems: {held.get('problems', '?')}; with the text of a training problem: "
                       f"{_unknown(held.get('overlap_with_train'))}; training problems removed by dedup as copies "
                       f"of eval-set problems: {_unknown(held.get('decontaminated_from_training'))}.")]
    return "\n".join(lines)


def _unknown(value: Any) -> str:
    """A count, or "unknown" where the stage it comes from has not run."""
    return "unknown" if value is None else str(value)


def read(run_dir: Path) -> dict[str, Any] | None:
    """A run's eval.json, or None when the eval stage has not written one."""
    path = run_dir / STAGE / EVAL_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def markdown(run_dir: Path) -> str | None:
    """A run's eval table (see `table`), or None when the eval stage has not written eval.json."""
    found = read(run_dir)
    return table(found) if found is not None else None


def run(run_dir: Path, config: Config, *, force: bool = False, load: Loader | None = None,
        decoder: DecoderFactory | None = None, progress: Callable[[float], None] | None = None) -> store.Manifest:
    """Run the eval stage on `run_dir`: base, SFT and GRPO students on the held-out set.

    Writes eval.json and, when the GRPO stage is complete, the exported model's card
    (`grpo/model/README.md`). `load` and `decoder` default to the trained students
    (`training.lora.load_student`, read onto the device mesh) and `decoding`. `progress` gets the
    fraction of models that answered every held-out problem.
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
    # The few-shot prompt and the filter's checks decide the scores: they are part of the key.
    stage_config = {**config.eval.model_dump(mode="json"), "seed": config.seed, "dtype": config.student.dtype,
                    "student": registry.identity(config.student.model, revision=config.student.revision),
                    "few_shot_prompt": teacher_prompts.template_version(),
                    "filter": config.filter.model_dump(mode="json")}
    card = run_dir / "grpo" / MODEL_DIR / model_card.README
    carded = "grpo" not in missing

    def compute() -> store.StageResult:
        result = evaluate(held, models, config, missing=missing, progress=progress)
        if carded:
            payload = report(dataclasses.asdict(result.stats))
            model_card.render(run_dir, config, payload, table(payload)).save(card)
        return result

    manifest = store.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, force=force, compute=compute,
                               outputs=(f"../grpo/{MODEL_DIR}/{model_card.README}",) if carded else ())
    store.write_json(report(dataclasses.asdict(stats.read(run_dir, STAGE, EvalStats))), run_dir / STAGE / EVAL_JSON)
    return manifest
