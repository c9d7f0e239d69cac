"""The facts a data card states, read from the run folder's stage files, never recomputed."""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from curation.sources.hub import FORMATS
from machinery import formats, store

FUNNEL = (("pull", "problems"), ("dedup", "problems"), ("generate", "samples"), ("filter", "traces"),
          ("build", "GRPO problems"))
PROCEDURAL_LICENSE = "apache-2.0"  # reasoning-gym's generators
CONFIG_FILE = "config.yaml"
# The keys of config.yaml that shape the data (student: its chat template); training keys stay out,
# so a card describes the data alone and does not change when only training settings do.
CURATION_KEYS = ("profile", "seed", "sources", "teacher", "filter", "dedup", "build", "student")


def scrub(value: Any, run_dir: Path) -> Any:
    """Make a value safe to publish: no absolute or home paths (run-relative or ~ instead)."""
    if isinstance(value, dict):
        return {k: scrub(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, run_dir) for v in value]
    if not isinstance(value, str):
        return value
    text = value.replace(str(run_dir.resolve()), "<run>")
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


def _stats(run_dir: Path, stage: str) -> dict[str, Any]:
    return json.loads((run_dir / stage / store.STATS).read_text())


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
    """Everything the cards say, from stats.json, manifest.json and config.yaml of each stage."""
    manifests = {stage: store.finished(run_dir, stage).manifest for stage, _ in FUNNEL}
    funnel = []
    for stage, unit in FUNNEL:
        stats = _stats(run_dir, stage)
        funnel.append({"stage": stage, "unit": unit, "in": stats["rows_in"], "out": stats["kept"],
                       "rejected": stats["rejected"], "reasons": stats["reasons"]})
    dedup = _stats(run_dir, "dedup")
    generate = manifests["generate"].config
    endpoints = endpoint_summary(_stats(run_dir, "generate").get("endpoints", {}))
    config_text = curation_config(run_dir)
    return scrub({
        "dataset": run_dir.resolve().parent.name,
        "version": run_dir.resolve().name,
        "sources": sources(manifests["pull"].config),
        "funnel": funnel,
        "dedup": {"threshold": dedup["threshold"], "bands": dedup["bands"], "rows_per_band": dedup["rows_per_band"],
                  "clusters": dedup["clusters"], "eval_items": dedup["eval_items"],
                  "contaminated_by": dedup["contaminated_by"], "hits": dedup["hits"],
                  "contamination_examples": dedup.get("contamination_examples", {}),
                  "earlier_versions": dedup["earlier_versions"], "reasons": dedup["reasons"]},
        "teacher": {key: generate.get(key) for key in ("backend", "model", "style", "n", "temperature", "top_p",
                                                      "max_new_tokens")}
                   | {"template_version": generate.get("template"), "system_prompt": formats.SYSTEM,
                      "tokens_per_s": _stats(run_dir, "generate").get("tokens_per_s")}
                   | ({"endpoints": endpoints} if endpoints else {}),
        "filter": _stats(run_dir, "filter"),
        "build": _stats(run_dir, "build"),
        "stage_hashes": {stage: m.outputs for stage, m in manifests.items()},
        "code_version": manifests["build"].code_version,
        "config_yaml": config_text,
        "config": yaml.safe_load(config_text) if config_text else None,
    }, run_dir)
