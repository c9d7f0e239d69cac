"""The facts a data card states, read from the run folder's stage files, never recomputed."""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from curation.build import BuildStats
from curation.dedup import DedupStats
from curation.filters import FilterStats
from curation.generate import GenerateStats
from curation.pull import PullStats
from curation.sources.hub import FORMATS
from curation.teacher import dollars
from machinery import formats, redact, stats, store

FUNNEL = (("pull", "problems"), ("dedup", "problems"), ("generate", "samples"), ("filter", "traces"),
          ("build", "GRPO problems"))
# The record each stage writes to its stats.json: the cards read figures from these, by attribute.
RECORDS: dict[str, type[store.StageStats]] = {"pull": PullStats, "dedup": DedupStats, "generate": GenerateStats,
                                              "filter": FilterStats, "build": BuildStats}
PROCEDURAL_LICENSE = "apache-2.0"  # reasoning-gym's generators
CONFIG_FILE = "config.yaml"
# The keys of config.yaml that shape the data (student: its chat template); training keys stay out,
# so a card describes the data alone and does not change when only training settings do.
CURATION_KEYS = ("profile", "seed", "sources", "teacher", "filter", "dedup", "build", "student")


def scrub(value: Any, run_dir: Path) -> Any:
    """Make a value safe to publish: no URL credentials (`***`), no absolute or home paths (run-relative or ~)."""
    if isinstance(value, dict):
        return {k: scrub(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, run_dir) for v in value]
    if not isinstance(value, str):
        return value
    text = redact.text(value).replace(str(run_dir.resolve()), "<run>")
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        text = text.replace(home, "~")
    cwd = str(Path.cwd())
    if cwd != "/":
        text = text.replace(cwd + "/", "")
    return re.sub(r"(?<![\w~<.])/(?:[\w.-]+/)+", "…/", text)  # any other absolute directory


def endpoint_summary(endpoints: dict[str, dict[str, int]]) -> str | None:
    """One line over the teacher's endpoints (generate stats), e.g. `URL: 40 requests, 38 answered, ...`."""
    if not endpoints:
        return None
    parts = []
    for url, n in sorted(endpoints.items()):
        benched = f", benched {n['benched']}x" if n.get("benched") else ""
        parts.append(f"{url}: {n['requests']} requests, {n['successes']} answered, {n['failures']} failed{benched}")
    return "; ".join(parts)


def _cost_row(stage: str, who: str, usage: dict[str, Any], traces: int, seconds: float | None,
              spent: str) -> dict[str, Any]:
    """One line of the cost table: billed requests and tokens, tokens per kept trace, wall time, spend."""
    tokens = int(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
    return {"stage": stage, "who": who, "billed": int(usage.get("billed", 0)), "retries": int(usage.get("retries", 0)),
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "tokens_per_trace": round(tokens / traces, 1) if traces else None,
            "seconds": seconds, "spent": spent}


def cost_rows(generated: GenerateStats, filtered: FilterStats) -> list[dict[str, Any]]:
    """What the teacher (per endpoint, then in all) and the judge were billed this run, per kept trace.

    Tokens are the usage the servers reported for this run's requests (cache hits are not billed
    again); `spent` is dollars at the configured price, CPU-seconds for the embedded teacher, or `-`.
    """
    traces = filtered.kept
    rows = []
    # One line per endpoint when there are several (one endpoint's line would repeat the total)
    for url, usage in generated.endpoint_usage.items() if len(generated.endpoint_usage) > 1 else ():
        price = generated.endpoint_cost_usd.get(url)
        rows.append(_cost_row("generate", url, usage, traces, None, dollars(price) if price is not None else "-"))
    spent = (dollars(generated.cost_usd) if generated.cost_usd is not None
             else f"{generated.cpu_s:.1f} CPU-s" if generated.cpu_s is not None else "-")
    total = {"billed": generated.billed_requests, "retries": generated.retries,
             "prompt_tokens": generated.prompt_tokens, "completion_tokens": generated.completion_tokens}
    rows.append(_cost_row("generate", "teacher, all endpoints", total, traces, generated.seconds, spent))
    if filtered.judge:
        judge = filtered.judge
        rows.append(_cost_row("filter", "judge", judge, traces, judge.get("seconds"),
                              dollars(judge["cost_usd"]) if "cost_usd" in judge else "-"))
    return rows


def curation_config(run_dir: Path) -> str | None:
    """The curation part of the run's config.yaml (CURATION_KEYS) as YAML, or None without a config.yaml."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    return yaml.safe_dump({k: config[k] for k in CURATION_KEYS if k in config}, sort_keys=False)


def sources(pull_config: dict[str, Any]) -> list[dict[str, str]]:
    """Each source with its version or revision and its license."""
    found = []
    for source in pull_config["sources"]:
        if source["kind"] == "procedural":
            found.append({"name": f"reasoning-gym/{source['task']}", "license": PROCEDURAL_LICENSE,
                          "version": f"reasoning-gym {metadata.version('reasoning-gym')}, seed "
                                     f"{source.get('seed') if source.get('seed') is not None else pull_config['seed']}"
                                     f", n={source['n']}"})
        else:
            origin = (f"local copy {Path(str(source['data_files'])).name}" if source.get("data_files")
                      else f"revision {source.get('revision') or 'main'}")
            found.append({"name": source["id"], "license": FORMATS[source["id"]].license,
                          "version": f"{origin}, split {source['split']}"})
    return found


def gather(run_dir: Path) -> dict[str, Any]:
    """Everything the cards say, from stats.json, manifest.json and config.yaml of each stage.

    Each stats.json is read as its stage's typed record (`RECORDS`): a field renamed or gone fails
    here, naming the file and the field, not later in the rendered card.
    """
    manifests = {stage: store.finished(run_dir, stage).manifest for stage, _ in FUNNEL}
    records = {stage: stats.read(run_dir, stage, RECORDS[stage]) for stage, _ in FUNNEL}
    funnel = [{"stage": stage, "unit": unit, "in": records[stage].rows_in, "out": records[stage].kept,
               "rejected": records[stage].rejected, "reasons": records[stage].reasons} for stage, unit in FUNNEL]
    dedup: DedupStats = records["dedup"]
    generated: GenerateStats = records["generate"]
    generate = manifests["generate"].config
    endpoints = endpoint_summary(generated.endpoints)
    config_text = curation_config(run_dir)
    return scrub({
        "dataset": run_dir.resolve().parent.name,
        "version": run_dir.resolve().name,
        "sources": sources(manifests["pull"].config),
        "funnel": funnel,
        "cost": cost_rows(generated, records["filter"]),
        "dedup": {"threshold": dedup.threshold, "bands": dedup.bands, "rows_per_band": dedup.rows_per_band,
                  "clusters": dedup.clusters, "eval_items": dedup.eval_items, "contaminated_by": dedup.contaminated_by,
                  "hits": dedup.hits, "contamination_examples": dedup.contamination_examples,
                  "earlier_versions": dedup.earlier_versions, "reasons": dedup.reasons},
        "teacher": {key: generate.get(key) for key in ("backend", "model", "style", "n", "temperature", "top_p",
                                                      "max_new_tokens")}
                   | {"template_version": generate.get("template"), "system_prompt": formats.SYSTEM,
                      "tokens_per_s": generated.tokens_per_s}
                   | ({"endpoints": endpoints} if endpoints else {}),
        # the whole records, as card.json has always held them
        "filter": dataclasses.asdict(records["filter"]),
        "build": dataclasses.asdict(records["build"]),
        "stage_hashes": {stage: m.outputs for stage, m in manifests.items()},
        "code_version": manifests["build"].code_version,
        "config_yaml": config_text,
        "config": yaml.safe_load(config_text) if config_text else None,
    }, run_dir)
