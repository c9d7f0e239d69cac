"""`distillery`: one command per pipeline stage, plus run/serve/up/deployments/card/push/estimate/model.

Every stage command takes `--run DIR` (the run folder `runs/<dataset>/<version>`), a
profile, a YAML config file and `--set key=value` overrides (docs/architecture.md "Interfaces").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flows.stages import STAGE_HELP, STAGES


class CliError(Exception):
    """A user error the CLI reports in one line, with exit status 2."""


def _config_args(parser: argparse.ArgumentParser) -> None:
    """The config options shared by every command that runs pipeline work."""
    parser.add_argument("--profile", default=None, help="named profile (default: cpu-smoke)")
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML overrides of the profile")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set teacher.n=4 (repeatable)")


def _push_args(sub: argparse._SubParsersAction) -> None:
    """The `push` subcommand's options."""
    help_ = "push a run's data cards (dataset repos) and GRPO model (model repo) to the Hugging Face Hub"
    push = sub.add_parser("push", help=help_, description=help_ + "; the token comes from $HF_TOKEN or --token-block")
    push.add_argument("--run", required=True, type=Path, metavar="DIR", help="run folder, runs/<dataset>/<version>")
    push.add_argument("--repo", required=True, metavar="ORG/NAME",
                      help="the model repo; the data cards go to ORG/NAME-sft and ORG/NAME-grpo")
    push.add_argument("--sft-repo", default=None, metavar="ORG/NAME", help="the SFT card's dataset repo instead")
    push.add_argument("--grpo-repo", default=None, metavar="ORG/NAME", help="the GRPO card's dataset repo instead")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True,
                            help="new repos are private (the default)")
    visibility.add_argument("--public", dest="private", action="store_false", help="new repos are public")
    push.add_argument("--token-block", default=None, metavar="NAME",
                      help="a Prefect Secret block holding the Hub token (default: $HF_TOKEN)")
    push.add_argument("--dry-run", action="store_true", help="print what would go where, with sizes; needs no token")


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
        stage_parser.add_argument("--wait", action="store_true",
                                  help="wait for another writer of the dataset folder instead of failing")
        if stage == "pull":
            stage_parser.add_argument("--hub-id", default=None, help="pull only this Hub dataset (replaces sources)")
            stage_parser.add_argument("--data-files", default=None, metavar="PATH",
                                      help="with --hub-id: local file or folder in the Hub format")
            stage_parser.add_argument("--split", default="train", help="with --hub-id: the split (default train)")
    run = sub.add_parser("run", help="the whole curate-and-train flow", description="the whole curate-and-train flow")
    run.add_argument("--run", type=Path, default=None, metavar="DIR", help="run folder (default runs/demo/v1)")
    _config_args(run)
    run.add_argument("--force", action="store_true", help="recompute every stage even if its output is complete")
    run.add_argument("--wait", action="store_true",
                     help="wait for another writer of the dataset folder instead of failing")
    sub.add_parser("serve", help="serve the Prefect deployments (needs a Prefect API: see `up`)",
                   description="serve the Prefect deployments (needs a Prefect API: see `up`)")
    up = sub.add_parser("up", help="start a local Prefect server if none answers, then serve",
                        description="start a local Prefect server if none answers, then serve")
    up.add_argument("--port", type=int, default=4200, help="port of the local server (default 4200)")
    sub.add_parser("deployments", help="print deployment names, flow/deployment, one a line",
                   description="print deployment names, flow/deployment, one a line")
    deploy = sub.add_parser("deploy-training", help="deploy the sft, grpo and eval flows to a work pool (the TPU pool)",
                            description="deploy the sft, grpo and eval flows to a work pool; with "
                                        "orchestration.training_deployment=NAME curate-and-train hands them off")
    deploy.add_argument("--pool", required=True, help="the work pool, e.g. tpu (prefect work-pool create ...)")
    deploy.add_argument("--name", default="tpu", help="deployment name (default tpu): <stage>/<name>")
    deploy.add_argument("--source", type=Path, default=None,
                        help="this repository's path as the workers see it (default: this checkout)")
    _push_args(sub)
    help_ = "ask the teacher about a few problems and print the generate stage's expected tokens, time and cost"
    estimate = sub.add_parser("estimate", help=help_, description=help_ + " (its requests are real and billed)")
    estimate.add_argument("--run", required=True, type=Path, metavar="DIR", help="run folder, runs/<dataset>/<version>")
    _config_args(estimate)
    estimate.add_argument("--sample", type=int, default=8, metavar="N", help="problems to ask about (default 8)")
    card = sub.add_parser("card", help="print a run's card paths and a one-screen summary",
                          description="print a run's card paths and a one-screen summary")
    card.add_argument("dir", type=Path, metavar="DIR", help="run folder, runs/<dataset>/<version>")
    model = sub.add_parser("model", help="model utilities", description="model utilities")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    check = model_sub.add_parser("check", help="greedy continuation and perplexity of a model",
                                 description="print a greedy continuation and a last line perplexity=X")
    check.add_argument("name", help="model: gemma3-270m, a Hub id (Qwen/Qwen2.5-Math-1.5B) or a Hugging Face folder")
    check.add_argument("--revision", default=None, help="a Hub id's branch, tag or commit (default main)")
    check.add_argument("--data-files", type=Path, default=None,
                       help="a local GSM8K test file in the Hub's format (default: openai/gsm8k from the Hub)")
    check.add_argument("-n", type=int, default=50, help="questions for the perplexity (default 50)")
    return parser


def _config(args: argparse.Namespace):
    """The resolved config of a command from its profile, config file and --set overrides."""
    from machinery.config import load_config

    return load_config(args.profile, args.config, args.sets)


def _stage(args: argparse.Namespace) -> int:
    """`distillery <stage>`: run one stage on a run folder."""
    from flows import report, stages

    if args.command == "pull" and args.hub_id:  # as a --set, so that config.yaml records the source
        source = {"kind": "hub", "id": args.hub_id, "split": args.split, "data_files": args.data_files}
        args.sets = [*args.sets, f"sources=[{json.dumps(source)}]"]
    elif getattr(args, "data_files", None):
        raise CliError("--data-files needs --hub-id to say which format the files are in")
    outcome = stages.run(args.command, args.run, _config(args), force=args.force, wait=args.wait)
    if outcome.skipped:
        print(f"{args.command}: skipped, complete output with key {outcome.manifest.key[:12]} already in "
              f"{args.run / args.command}")
    print(report.stage_line(args.command, args.run))
    return 0


def _run(args: argparse.Namespace) -> int:
    """`distillery run`: the curate-and-train flow, then where its results are."""
    from flows import pipeline, report

    config = _config(args)
    run_dir = (args.run or Path("runs/demo/v1")).resolve()
    pipeline.curate_and_train(run_dir=str(run_dir), config=config, force=args.force, wait=args.wait)
    print(report.final(run_dir))
    return 0


def _deployments(args: argparse.Namespace) -> int:
    """`distillery deployments`: every deployment as flow/deployment, one a line."""
    from flows import deployments

    for spec in deployments.specs():
        print(spec.full_name)
    return 0


def _deploy_training(args: argparse.Namespace) -> int:
    """`distillery deploy-training --pool POOL`: sft/grpo/eval deployments on that pool, one name a line."""
    from flows import deployments

    with contextlib.redirect_stdout(sys.stderr):  # Prefect's tables: stdout is the names, one a line
        names = deployments.deploy_training(args.pool, name=args.name, source=args.source or deployments.SOURCE)
    for name in names:
        print(name)
    return 0


def _serve(args: argparse.Namespace) -> int:
    """`distillery serve`: serve every deployment from this process."""
    from flows import server

    return server.serve()


def _up(args: argparse.Namespace) -> int:
    """`distillery up`: a local Prefect server if none answers, then serve."""
    from flows import server

    return server.up(port=args.port)


def _card(args: argparse.Namespace) -> int:
    """`distillery card DIR`: the data cards' summary, then the model card's eval table when eval has run."""
    from data_cards import cards
    from flows import report

    print(cards.summary(args.dir))
    print(report.model_card_lines(args.dir))
    return 0


def _push(args: argparse.Namespace) -> int:
    """`distillery push --run DIR --repo ORG/NAME`: the cards and model to the Hub (or, with --dry-run, the plan)."""
    from flows import push

    print(push.push(args.run, args.repo, private=args.private, token_block=args.token_block, dry_run=args.dry_run,
                    sft_repo=args.sft_repo, grpo_repo=args.grpo_repo))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    """`distillery estimate --run DIR`: the generate stage's bill, measured on a few problems (written nowhere)."""
    from curation.estimate import estimate
    from flows.secrets import teacher_api_key

    config = _config(args)
    if args.sample < 1:
        raise CliError(f"--sample must be at least 1, got {args.sample}")
    found = estimate(args.run, config.teacher, api_key=teacher_api_key(config.teacher), seed=config.seed,
                     sample=args.sample)
    print("\n".join(found.lines()))
    return 0


def _model(args: argparse.Namespace) -> int:
    """`distillery model check NAME`."""
    from training import model_check

    continuation, perplexity = model_check.check(args.name, args.data_files, args.n, revision=args.revision)
    print(f"{model_check.PROMPT}{continuation}")
    print(f"perplexity={perplexity:.4f}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **{stage: _stage for stage in STAGES}, "run": _run, "deployments": _deployments,
    "deploy-training": _deploy_training, "serve": _serve, "up": _up,
    "card": _card, "push": _push, "estimate": _estimate, "model": _model}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `distillery` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # One line per HTTP request, orbax's internals and JAX's backend probing drown the progress bars.
    for chatty in ("httpx", "httpx2", "openai", "absl", "jax._src.xla_bridge"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    handler = COMMANDS[args.command]
    from curation.sources.hub import SourceError
    from machinery.config import ConfigError
    from machinery.runlock import RunLockedError
    from machinery.store import StageInputError, WriteError

    try:
        return handler(args)
    except (CliError, ConfigError, SourceError, StageInputError, RunLockedError, WriteError, LookupError) as err:
        message = err.args[0] if isinstance(err, LookupError) and err.args else err
        print(f"distillery {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
