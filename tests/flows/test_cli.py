"""The `distillery` command line: every command has help; pull works and fails in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows import cli
from flows.stages import STAGES


@pytest.mark.parametrize("command", [*cli.STAGES, "run", "serve", "up", "deployments", "deploy-training", "card",
                                     "push", "estimate", "model"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: distillery" in capsys.readouterr().out


def test_model_check_has_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["model", "check", "--help"])
    assert "perplexity" in capsys.readouterr().out


def test_console_script_pull_with_the_cpu_smoke_profile(tmp_path):
    run = tmp_path / "runs" / "demo"
    done = subprocess.run([sys.executable, "-m", "flows.cli", "pull", "--profile", "cpu-smoke", "--run", str(run)],
                          capture_output=True, text=True, check=True)
    assert "64 problems kept, 0 rejected" in done.stdout
    assert (run / "pull" / "manifest.json").is_file()
    again = subprocess.run([sys.executable, "-m", "flows.cli", "pull", "--run", str(run)],
                           capture_output=True, text=True, check=True)
    assert "skipped" in again.stderr


def test_pull_from_local_hub_files(tmp_path, shared_data, capsys):
    code = cli.main(["pull", "--run", str(tmp_path), "--hub-id", "openai/gsm8k",
                     "--data-files", str(shared_data / "gsm8k" / "test.jsonl"), "--split", "test"])
    assert code == 0
    assert "1319 problems kept, 0 rejected" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hub-id", "openai/gsm8k", "--data-files", "/no/such/file.jsonl"], "data file not found: /no/such/file.jsonl"),
        (["--hub-id", "acme/unknown"], "unsupported Hub dataset 'acme/unknown'"),
        (["--set", "teacher.n=0"], "teacher.n"),
        (["--profile", "gpu"], "unknown profile 'gpu'"),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, capsys, argv, message):
    assert cli.main(["pull", "--run", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("distillery pull: error:")


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_training_stages_before_build_say_what_to_run_first(tmp_path, capsys, stage):
    assert cli.main([stage, "--run", str(tmp_path), "--profile", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"distillery {stage}: error:") and "run" in err[0]


def test_eval_alone_scores_the_base_model_and_says_what_is_missing(tmp_path, capsys):
    """With configured eval sets, eval needs no earlier stage: the trained models are reported as not run."""
    assert cli.main(["eval", "--run", str(tmp_path), "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "| base |" in out and "| sft | not run |" in out and "| grpo | not run |" in out


def test_deployments_prints_every_deployment_one_a_line(capsys):
    assert cli.main(["deployments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "curate-and-train/cpu-smoke"
    assert {f"{stage}/cpu-smoke" for stage in STAGES} <= set(lines)
    assert "refresh/weekly" in lines and "curate-and-train/tiny" in lines
    assert all(line.count("/") == 1 and " " not in line for line in lines)


def test_dedup_after_pull_reports_contamination(tmp_path, shared_data, capsys):
    run = tmp_path / "gsm" / "v1"
    assert cli.main(["pull", "--run", str(run), "--hub-id", "openai/gsm8k", "--split", "test",
                     "--data-files", str(shared_data / "gsm8k" / "test.jsonl")]) == 0
    eval_sets = f"dedup.eval_sets=[{{kind: hub, id: openai/gsm8k, split: test, data_files: {shared_data}/gsm8k}}]"
    assert cli.main(["dedup", "--run", str(run), "--set", eval_sets]) == 0
    out = capsys.readouterr().out
    # the test set against itself: every problem is a benchmark leak
    assert "dedup: 0 problems kept of 1319; rejected: 1319 contaminated" in out
    assert "contamination vs openai/gsm8k (1319 items): 1319 training problems" in out


def test_dedup_before_pull_says_to_run_pull_first(tmp_path, capsys):
    assert cli.main(["dedup", "--run", str(tmp_path / "ds" / "v1")]) == 2
    assert "stage 'pull' has no complete output" in capsys.readouterr().err


def test_model_check_of_a_hub_model_missing_offline_is_one_line_with_the_download_command(tmp_path):
    """An empty Hugging Face cache and HF_HUB_OFFLINE=1: exit 2, one line naming the id and `hf download`."""
    import os

    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "model", "check", "google/gemma-3-1b-it"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and "LookupError" not in done.stderr, done.stderr
    assert lines[0].startswith("distillery model: error: model 'google/gemma-3-1b-it'")
    assert "hf download google/gemma-3-1b-it" in lines[0]
