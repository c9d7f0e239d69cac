"""`distillery`: one command per pipeline stage, plus run/serve/up/deployments/card/model.

Every stage command takes `--run DIR` (the run folder `runs/<dataset>/<version>`), a
profile, a YAML config file and `--set key=value` overrides (DESIGN.md "Interfaces").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

STAGES = ("pull", "dedup", "generate", "filter", "build", "cards", "sft", "grpo", "eval")
# Stages whose work lands with later issues; their commands exist so the interface is stable.
PENDING = {
    "sft": 9, "grpo": 9, "eval": 9,
    "run": 10, "serve": 10, "up": 10, "deployments": 10,
}
STAGE_HELP = {
    "pull": "load the configured sources into the problem table",
    "generate": "have the teacher write reasoning traces for every problem",
    "filter": "keep traces with the right format and the verified answer",
    "dedup": "remove exact and near-duplicates and benchmark contamination",
    "build": "build the SFT set and the GRPO prompt set",
    "cards": "render the data cards of the built sets",
    "sft": "LoRA supervised warmup of the student",
    "grpo": "GRPO reinforcement learning of the student",
    "eval": "held-out accuracy before SFT, after SFT and after GRPO",
}


class CliError(Exception):
    """A user error the CLI reports in one line, with exit status 2."""


def _config_args(parser: argparse.ArgumentParser) -> None:
    """The config options shared by every command that runs pipeline work."""
    parser.add_argument("--profile", default=None, help="named profile (default: cpu-smoke)")
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML overrides of the profile")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set teacher.n=4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `distillery` and all its subcommands."""
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        stage_parser = sub.add_parser(stage, help=STAGE_HELP[stage], description=STAGE_HELP[stage])
        stage_parser.add_argument("--run", required=True, type=Path, metavar="DIR",
                                  help="run folder, runs/<dataset>/<version>")
        _config_args(stage_parser)
        stage_parser.add_argument("--force", action="store_true", help="recompute even if the output is complete")
        if stage == "pull":
            stage_parser.add_argument("--hub-id", default=None, help="pull only this Hub dataset (replaces sources)")
            stage_parser.add_argument("--data-files", default=None, metavar="PATH",
                                      help="with --hub-id: local file or folder in the Hub format")
            stage_parser.add_argument("--split", default="train", help="with --hub-id: the split (default train)")
    run = sub.add_parser("run", help="the whole curate-and-train flow", description="the whole curate-and-train flow")
    run.add_argument("--run", type=Path, default=None, metavar="DIR", help="run folder")
    _config_args(run)
    sub.add_parser("serve", help="serve the Prefect deployments", description="serve the Prefect deployments")
    sub.add_parser("up", help="start a local Prefect server if none answers, then serve",
                   description="start a local Prefect server if none answers, then serve")
    sub.add_parser("deployments", help="print deployment names, flow/deployment, one a line",
                   description="print deployment names, flow/deployment, one a line")
    card = sub.add_parser("card", help="print a run's card paths and a one-screen summary",
                          description="print a run's card paths and a one-screen summary")
    card.add_argument("dir", type=Path, metavar="DIR", help="run folder, runs/<dataset>/<version>")
    model = sub.add_parser("model", help="model utilities", description="model utilities")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    check = model_sub.add_parser("check", help="greedy continuation and perplexity of a model",
                                 description="print a greedy continuation and a last line perplexity=X")
    check.add_argument("name", help="model name, e.g. gemma3-270m")
    check.add_argument("--data-files", type=Path, default=Path("../shared/data/gsm8k/test.jsonl"),
                       help="GSM8K test questions in the Hub's format (default: ../shared/data/gsm8k/test.jsonl)")
    check.add_argument("-n", type=int, default=50, help="questions for the perplexity (default 50)")
    return parser


def _stats(run: Path, stage: str) -> dict:
    """A finished stage's stats.json."""
    return json.loads((run / stage / "stats.json").read_text())


def _reasons(stats: dict) -> str:
    """Reject reasons as "n reason, ..." for a one-line summary."""
    return ", ".join(f"{n} {r}" for r, n in stats["reasons"].items()) or "none"


def _load(args: argparse.Namespace):
    """The resolved config of a stage command, also written to DIR/config.yaml to reproduce the run."""
    import yaml

    from curation import store
    from curation.config import load_config

    config = load_config(args.profile, args.config, args.sets)
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    store.atomic_write_bytes(args.run / "config.yaml", text.encode())
    return config


def _pull(args: argparse.Namespace) -> int:
    """`distillery pull`."""
    from curation import pull

    if args.hub_id:  # as a --set, so that config.yaml records the source
        source = {"kind": "hub", "id": args.hub_id, "split": args.split, "data_files": args.data_files}
        args.sets = [*args.sets, f"sources=[{json.dumps(source)}]"]
    elif args.data_files:
        raise CliError("--data-files needs --hub-id to say which format the files are in")
    config = _load(args).pull()
    manifest = pull.run(args.run, config, force=args.force)
    counts = manifest.counts
    print(f"pull: {counts['kept']} problems kept, {counts['rejected']} rejected of {counts['rows_in']} "
          f"-> {args.run / pull.STAGE / 'data.parquet'}")
    return 0


def _dedup(args: argparse.Namespace) -> int:
    """`distillery dedup`."""
    from curation import dedup

    config = _load(args).dedup
    manifest = dedup.run(args.run, config, force=args.force)
    stats = _stats(args.run, dedup.STAGE)
    reasons = _reasons(stats)
    print(f"dedup: {manifest.counts['kept']} problems kept of {manifest.counts['rows_in']}; rejected: {reasons}; "
          f"LSH {stats['bands']} bands x {stats['rows_per_band']} rows -> {args.run / dedup.STAGE / 'data.parquet'}")
    for name, count in stats["eval_items"].items():
        print(f"  contamination vs {name} ({count} items): {stats['contaminated_by'].get(name, 0)} training problems")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """`distillery generate`."""
    from curation import generate

    config = _load(args)
    manifest = generate.run(args.run, config.teacher, seed=config.seed, force=args.force)
    stats = _stats(args.run, generate.STAGE)
    print(f"generate: {manifest.counts['kept']} samples of {manifest.counts['rows_in']} "
          f"({stats['from_cache']} from the request cache, {stats['requests_sent']} requests sent), "
          f"{manifest.counts['rejected']} teacher errors -> {args.run / generate.STAGE / 'data.parquet'}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    """`distillery filter`."""
    from curation import filters

    config = _load(args).filter
    manifest = filters.run(args.run, config, force=args.force)
    stats = _stats(args.run, filters.STAGE)
    reasons = _reasons(stats)
    print(f"filter: {manifest.counts['kept']} traces kept of {manifest.counts['rows_in']} "
          f"for {stats['problems_with_a_trace']}/{stats['problems']} problems; mean pass rate "
          f"{stats['mean_pass_rate']:.2f}; rejected: {reasons} -> {args.run / filters.STAGE / 'data.parquet'}")
    return 0


def _build(args: argparse.Namespace) -> int:
    """`distillery build`."""
    from curation import build

    config = _load(args)
    manifest = build.run(args.run, config.build, student=config.student.model, seed=config.seed, force=args.force)
    stats = _stats(args.run, build.STAGE)
    reasons = _reasons(stats)
    print(f"build: SFT {stats['sft_rows']['train']} train / {stats['sft_rows']['validation']} validation traces; "
          f"GRPO {stats['grpo_rows']['train']} train / {stats['grpo_rows']['validation']} validation problems "
          f"of {manifest.counts['rows_in']} (left out: {reasons}) -> {args.run / build.STAGE}")
    return 0


def _cards(args: argparse.Namespace) -> int:
    """`distillery cards`."""
    from data_cards import cards

    config = _load(args)
    cards.run(args.run, seed=config.seed, force=args.force)
    print(cards.summary(args.run))
    return 0


def _card(args: argparse.Namespace) -> int:
    """`distillery card DIR`."""
    from data_cards import cards

    print(cards.summary(args.dir))
    return 0


def _model(args: argparse.Namespace) -> int:
    """`distillery model check NAME`."""
    from training import model_check

    continuation, perplexity = model_check.check(args.name, args.data_files, args.n)
    print(f"{model_check.PROMPT}{continuation}")
    print(f"perplexity={perplexity:.4f}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pull": _pull, "dedup": _dedup, "generate": _generate, "filter": _filter, "build": _build, "cards": _cards,
    "card": _card, "model": _model}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `distillery` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("httpx", "httpx2", "openai"):  # one line per HTTP request drowns the progress bar
        logging.getLogger(chatty).setLevel(logging.WARNING)
    handler = COMMANDS.get(args.command)
    if handler is None:
        print(f"distillery {args.command}: not implemented yet (issue #{PENDING[args.command]})", file=sys.stderr)
        return 2
    from curation.config import ConfigError
    from curation.sources.hub import SourceError
    from curation.store import StageInputError

    try:
        return handler(args)
    except (CliError, ConfigError, SourceError, StageInputError, LookupError) as err:
        message = err.args[0] if isinstance(err, LookupError) and err.args else err
        print(f"distillery {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
