"""The model card of the exported GRPO model: a Hugging Face model card README.md with `model-index`.

Written by the eval stage next to the exported weights (`grpo/model/README.md`), since the
card's headline is the held-out evaluation. Data cards stay about data; this card links to
them as its training datasets.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from data_cards.facts import scrub
from machinery.config import Config
from models import registry

README = "README.md"
# The data cards as seen from runs/<dataset>/<version>/grpo/model/.
DATASETS = ("../../cards/sft", "../../cards/grpo")
# (eval.json key, model-index metric type, name): strict accuracy is the headline `accuracy`.
METRICS = (("accuracy", "accuracy", "held-out strict accuracy (kept by the curation filter's checks; greedy)"),
           ("answer_accuracy", "answer_accuracy", "held-out answer accuracy (final answer anywhere; greedy)"),
           ("format", "format_compliance", "format compliance (greedy)"))


def _held_out(description: Mapping[str, Any]) -> tuple[str, str]:
    """(dataset type, readable name) of the held-out set from eval.json's `set`."""
    if description.get("kind") == "eval.sets":
        names = [s["name"] for s in description.get("sets", [])]
        return "+".join(sorted({n.split(" ")[0] for n in names})) or "eval.sets", "; ".join(names)
    return "distillery/validation", str(description.get("from", "GRPO validation split"))


def eval_results(report: Mapping[str, Any], model: str) -> list[EvalResult]:
    """model-index entries: the model's strict and answer accuracy and format compliance (and pass@k), held out."""
    scores = report[model]
    kind, name = _held_out(report.get("set", {}))
    results = [EvalResult(task_type="text-generation", dataset_type=kind, dataset_name=name, metric_type=metric,
                          metric_name=label, metric_value=scores[key]) for key, metric, label in METRICS]
    if "pass_at_k" in scores:
        results.append(EvalResult(task_type="text-generation", dataset_type=kind, dataset_name=name,
                                  metric_type="pass@k", metric_name=f"pass@{scores['k']}",
                                  metric_value=scores["pass_at_k"]))
    return results


def render(run_dir: Path, config: Config, report: Mapping[str, Any], table: str) -> ModelCard:
    """The model card of the run's GRPO model from eval.json's payload and its markdown table."""
    base = registry.hub_id(config.student.model)
    pinned = registry.identity(config.student.model, revision=config.student.revision)  # org/name@<commit>
    gemma = "gemma" in config.student.model.lower() or (base or "").startswith("google/gemma")
    card_data = ModelCardData(
        model_name=f"{run_dir.parent.name}-{run_dir.name}-grpo", base_model=base, datasets=list(DATASETS),
        license="gemma" if gemma else "other", language=["en"], library_name="transformers",
        pipeline_tag="text-generation", tags=["math", "reasoning", "distillation", "grpo", "lora", "tunix"],
        eval_results=eval_results(report, "grpo"))
    lora = config.sft.lora
    training = {"student": config.student.model_dump(mode="json") | {"resolved": pinned},
                "sft": config.sft.model_dump(mode="json"), "grpo": config.grpo.model_dump(mode="json"),
                "mesh": config.mesh.model_dump(mode="json"), "seed": config.seed}
    revision = pinned.partition("@")[2]
    lines = [f"base model: `{config.student.model}`" + (f" (`{base}` on the Hub)" if base else "")
             + (f", revision `{revision}`" if revision else ""),
             f"weights {config.student.dtype}, device mesh fsdp {config.mesh.fsdp or 'all'} x tp {config.mesh.tp}",
             f"LoRA rank {lora.rank}, alpha {lora.alpha}, on modules matching `{lora.targets}`",
             (f"SFT: {config.sft.steps} steps of {config.sft.batch_size} rows, learning rate "
              f"{config.sft.learning_rate}, loss on completion tokens only; the adapter is then merged into the weights"),
             (f"GRPO: a fresh LoRA on the SFT-merged model, {config.grpo.steps} steps of {config.grpo.batch_size} "
              f"prompts x {config.grpo.num_generations} rollouts, beta {config.grpo.beta} (KL to the SFT-merged model), "
              f"epsilon {config.grpo.epsilon}, learning rate {config.grpo.learning_rate}; rewards: format, partial "
              f"format, and a verified answer in a completion the curation filter would keep")]
    held = report.get("set", {})
    facts = scrub({"held_out": f"{held.get('problems', '?')} problems: {_held_out(held)[1]}",
                   "training_yaml": yaml.safe_dump(training, sort_keys=False)}, run_dir)
    template = resources.files("training").joinpath("model_card.md.j2").read_text()
    return ModelCard.from_template(
        card_data, template_str=template, title=f"{run_dir.parent.name} {run_dir.name}: GRPO student",
        base_line=f"`{base or config.student.model}`", dataset=run_dir.parent.name, version=run_dir.name,
        table=table, datasets=DATASETS, training_lines=lines, **facts)
