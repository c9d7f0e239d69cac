"""`distillery push` with huggingface_hub's own client against a local stand-in of the Hub.

The stand-in (tests/support/hub_standin.py) speaks the endpoints a push uses, LFS included;
Xet is off (HF_HUB_DISABLE_XET), so the safetensors and parquet files take the LFS path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData, constants

from flows import cli, push
from training.model_card import DATASETS

TOKEN = "hf_StandInWriteToken0123456789abcdef"
READ_ONLY = "hf_StandInReadOnlyToken0123456789abc"
SAFETENSORS_BYTES = 300_000  # a few hundred KB: through LFS, not inline in the commit


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def make_run(root: Path, dataset: str = "arith", version: str = "v1", seed: int = 0) -> Path:
    """A run folder with what a push reads: both card folders and the exported model with its card."""
    rng = random.Random(seed)
    run = root / "runs" / dataset / version
    for which in ("sft", "grpo"):
        card = run / "cards" / which
        (card / "data").mkdir(parents=True)
        (card / "plots").mkdir()
        (card / "README.md").write_text(f"---\nlicense: mit\npretty_name: {dataset} {which.upper()} ({version})\n"
                                        f"tags:\n- {which}\n---\n\n# {dataset}: {which.upper()} set, {version}\n")
        pl.DataFrame({"problem": [f"What is {i} + {seed}?" for i in range(20)],
                      "gold": [str(i + seed) for i in range(20)]}).write_parquet(card / "data" / "train.parquet")
        (card / "plots" / "lengths.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.randbytes(2_000))
        (card / "card.json").write_text(json.dumps({"set": which, "facts": {"dataset": dataset, "version": version}}))
    model = run / "grpo" / "model"
    model.mkdir(parents=True)
    # The eval stage's own template, so that a change in how it links the data cards fails here.
    template = resources.files("training").joinpath("model_card.md.j2").read_text()
    card = ModelCard.from_template(ModelCardData(datasets=list(DATASETS), license="other", model_name="student"),
                                   template_str=template, title=f"{dataset} {version}", dataset=dataset,
                                   version=version, datasets=DATASETS, table="| base | 0.1 |", training_lines=[])
    card.save(model / "README.md")
    (model / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "hidden_size": 8}))
    (model / "model.safetensors").write_bytes(rng.randbytes(SAFETENSORS_BYTES))
    return run


def _local_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The stand-in Hub as HF_ENDPOINT, Xet off, HF_TOKEN a write token for `acme`, HF_HOME a fresh folder."""
    from tests.support.hub_standin import HubStandIn

    with HubStandIn({TOKEN: {"acme"}, READ_ONLY: set()}) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        # What importing huggingface_hub with HF_ENDPOINT set would have computed:
        monkeypatch.setattr(constants, "ENDPOINT", standin.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            standin.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # and its paths, read at import:
        monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.delenv("DISTILLERY_KEY_HOSTS", raising=False)
        yield standin


def test_push_sends_every_file_byte_for_byte_and_links_the_card_to_the_pushed_datasets(hub, tmp_path):
    run = make_run(tmp_path)
    card_on_disk = (run / "grpo" / "model" / "README.md").read_bytes()

    report = push.push(run, "acme/arith")

    for which in ("sft", "grpo"):
        repo = hub.repo("dataset", f"acme/arith-{which}")
        assert repo.private
        sent = {k: v for k, v in repo.files.items() if k not in (".gitattributes", push.MARKER)}
        assert sent == _local_files(run / "cards" / which)
        assert json.loads(repo.files[push.MARKER]) == {"pushed_by": "distillery", "dataset": "arith",
                                                       "version": "v1", "set": which}
        assert {"data/train.parquet", "plots/lengths.png"} <= repo.lfs_paths
    model = hub.repo("model", "acme/arith")
    local = _local_files(run / "grpo" / "model")
    assert model.files["model.safetensors"] == local["model.safetensors"]
    assert model.files["config.json"] == local["config.json"]
    assert "model.safetensors" in model.lfs_paths and "config.json" not in model.lfs_paths
    oid = hashlib.sha256(local["model.safetensors"]).hexdigest()
    assert any(method == "PUT" and path == f"/lfs-upload/{oid}" for method, path, _ in hub.requests)

    pushed_card = model.files["README.md"].decode()
    assert _front_matter(pushed_card)["datasets"] == ["acme/arith-sft", "acme/arith-grpo"]
    assert f"({hub.url}/datasets/acme/arith-sft)" in pushed_card and "../../cards" not in pushed_card
    assert (run / "grpo" / "model" / "README.md").read_bytes() == card_on_disk  # eval's output stays as recorded

    for repo in (model, hub.repo("dataset", "acme/arith-sft")):
        assert [c["message"] for c in repo.commits] == [c["message"] for c in repo.commits[:1]]  # one commit
        assert "v1" in repo.commits[0]["message"]
        assert repo.tags == {"v1": repo.head}
    assert "pushed model acme/arith" in report


def test_a_refreshed_version_is_a_new_commit_and_tag_in_the_same_repos(hub, tmp_path):
    push.push(make_run(tmp_path), "acme/arith")
    v2 = make_run(tmp_path, version="v2", seed=1)
    (v2 / "cards" / "sft" / "plots" / "lengths.png").unlink()  # a file v1 pushed and v2 lacks
    (v2 / "cards" / "sft" / "plots" / "tokens.png").write_bytes(b"\x89PNG\r\n\x1a\nnew")

    push.push(v2, "acme/arith")

    sft = hub.repo("dataset", "acme/arith-sft")
    assert [c["message"] for c in sft.commits] == ["arith v1: sft", "arith v2: sft"]
    assert sft.tags["v1"] == sft.commits[0]["oid"] and sft.tags["v2"] == sft.commits[1]["oid"]
    assert {k: v for k, v in sft.files.items() if k not in (".gitattributes", push.MARKER)} == \
        _local_files(v2 / "cards" / "sft")  # the stale plot deleted, not left beside v2's
    assert json.loads(sft.files[push.MARKER])["version"] == "v2"
    model = hub.repo("model", "acme/arith")
    assert model.files["model.safetensors"] == (v2 / "grpo" / "model" / "model.safetensors").read_bytes()
    assert sorted(model.tags) == ["v1", "v2"]


def test_pushing_the_same_version_again_keeps_its_tag(hub, tmp_path):
    run = make_run(tmp_path)
    push.push(run, "acme/arith")
    push.push(run, "acme/arith")  # nothing changed: no new commit, the tag already names the head
    model = hub.repo("model", "acme/arith")
    assert len(model.commits) == 1 and model.tags == {"v1": model.head}


def test_a_repo_holding_another_dataset_is_refused(hub, tmp_path):
    push.push(make_run(tmp_path), "acme/arith")
    other = make_run(tmp_path, dataset="geometry")
    with pytest.raises(push.PushError, match=r"holds the sft set of dataset 'arith' \(version v1"):
        push.push(other, "acme/arith")
    assert len(hub.repo("dataset", "acme/arith-sft").commits) == 1  # nothing of geometry committed
    # the right repo names for a set: the GRPO card may not go into the SFT card's repo
    with pytest.raises(push.PushError, match="holds the sft set"):
        push.push(make_run(tmp_path / "again"), "acme/new", grpo_repo="acme/arith-sft")


def test_an_older_version_does_not_replace_a_newer_one(hub, tmp_path):
    push.push(make_run(tmp_path, version="v2"), "acme/arith")
    with pytest.raises(push.PushError, match="already holds version v2, newer than v1"):
        push.push(make_run(tmp_path, version="v1"), "acme/arith")
    assert [c["message"] for c in hub.repo("dataset", "acme/arith-sft").commits] == ["arith v2: sft"]


def test_a_repo_with_files_distillery_did_not_push_is_refused(hub, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("acme/theirs-sft", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"# someone's dataset\n", path_in_repo="README.md", repo_id="acme/theirs-sft",
                    repo_type="dataset")
    with pytest.raises(push.PushError, match=r"acme/theirs-sft holds files distillery did not push \(README.md\)"):
        push.push(make_run(tmp_path), "acme/theirs")


@pytest.mark.parametrize(("token", "message"), [
    (None, "no Hugging Face token: set $HF_TOKEN"),
    ("hf_NotATokenTheHubKnows", "refused the token (401)"),
    (READ_ONLY, "the token may not write there (403)"),
])
def test_refusals_say_what_to_do_in_one_line(hub, tmp_path, monkeypatch, capsys, token, message):
    if token is None:
        monkeypatch.delenv("HF_TOKEN")
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    assert cli.main(["push", "--run", str(make_run(tmp_path)), "--repo", "acme/arith"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("distillery push: error:") and message in err[-1]
    assert not any(repo.commits for repo in hub.repos.values())


def test_missing_outputs_name_the_stage_to_run(tmp_path):
    run = make_run(tmp_path)
    (run / "grpo" / "model" / "README.md").unlink()
    with pytest.raises(push.PushError, match=r"grpo/model/README.md: not written yet; run `distillery eval"):
        push.push(run, "acme/arith", dry_run=True)
    with pytest.raises(push.PushError, match="give ORG/NAME"):
        push.push(run, "arith", dry_run=True)


def test_an_endpoint_outside_the_allowed_hosts_gets_no_token(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.net")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(push.PushError, match=r"DISTILLERY_KEY_HOSTS.*add hub.example.net"):
        push.push(make_run(tmp_path), "acme/arith")
    monkeypatch.setenv("DISTILLERY_KEY_HOSTS", "*.example.net")
    push.check_endpoint("https://hub.example.net")  # allowed once its operator lists it


def test_dry_run_needs_no_token_sends_nothing_and_states_sizes(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    run = make_run(tmp_path)
    assert cli.main(["push", "--run", str(run), "--repo", "acme/arith", "--public", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert hub.requests == []
    assert "public repos, tag v1" in out
    assert f"model acme/arith <- {run / 'grpo' / 'model'} (3 files" in out
    assert "model.safetensors  293.0 KB" in out  # 300,000 bytes
    assert "dataset acme/arith-sft <- " in out and "dataset acme/arith-grpo <- " in out


def test_the_token_is_never_written_logged_or_printed(hub, tmp_path, monkeypatch, capsys, caplog):
    run = make_run(tmp_path)
    with caplog.at_level(logging.DEBUG):
        assert cli.main(["-v", "push", "--run", str(run), "--repo", "acme/arith"]) == 0
        assert cli.main(["push", "--run", str(run), "--repo", "acme/arith", "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert "pushed model acme/arith" in printed.out
    assert TOKEN not in printed.out + printed.err + caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert written == []
    # sent only as the Authorization header, never in a URL or to the LFS storage URLs
    for method, path, headers in hub.requests:
        assert TOKEN not in path
        if path.startswith("/lfs-upload/"):
            assert TOKEN not in json.dumps(headers)


def test_past_the_large_size_the_resumable_folder_upload_is_used(hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    upload_folder = HfApi.upload_folder

    def spy(self, **kwargs):
        calls.append(kwargs)
        return upload_folder(self, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", spy)
    run = make_run(tmp_path)
    push.push(run, "acme/arith", large_bytes=0)
    v2 = make_run(tmp_path, version="v2", seed=1)
    (v2 / "grpo" / "model" / "config.json").unlink()
    push.push(v2, "acme/arith", large_bytes=0)
    assert len(calls) == 6
    model = hub.repo("model", "acme/arith")
    assert model.files["model.safetensors"] == (v2 / "grpo" / "model" / "model.safetensors").read_bytes()
    assert "config.json" not in model.files  # deleted through delete_patterns
    assert _front_matter(model.files["README.md"].decode())["datasets"] == ["acme/arith-sft", "acme/arith-grpo"]
    assert not list(run.rglob(".cache"))  # the client's resume state stayed in the staging folder


def test_publish_runs_last_in_curate_and_train_with_a_prefect_secret_block(hub, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    from flows import pipeline, stages
    from machinery.config import load_config

    monkeypatch.delenv("HF_TOKEN")
    run = make_run(tmp_path)
    monkeypatch.setattr(stages, "STAGES", ())  # the stages' outputs are already written: only publish runs
    config = load_config("tiny", sets=["publish.repo=acme/arith", "publish.private=false",
                                       "publish.token_block=hub-token"])
    with prefect_test_harness(server_startup_timeout=120):
        Secret(value=TOKEN).save("hub-token", overwrite=True)
        results = pipeline.curate_and_train(run_dir=str(run), config=config)
        with pytest.raises(push.PushError, match=r"Prefect Secret block 'no-such' .*Secret\(value=\.\.\.\)"):
            push.token("no-such")
    assert [r["stage"] for r in results] == ["publish"]
    assert not hub.repo("model", "acme/arith").private
    assert hub.repo("model", "acme/arith").files["model.safetensors"] == \
        (run / "grpo" / "model" / "model.safetensors").read_bytes()
