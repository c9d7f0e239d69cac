"""`distillery push`: a run's data cards and GRPO model to the Hugging Face Hub.

Three repos per dataset: the SFT and GRPO card folders (`cards/sft/`, `cards/grpo/`) as
dataset repos `ORG/NAME-sft` and `ORG/NAME-grpo`, the exported model (`grpo/model/`) as the
model repo `ORG/NAME`. Each push of a version is one commit whose message names it, plus a
tag named after the version, so a refreshed version (v2) lands in the same repos as a new
commit. Files an earlier version pushed and this one lacks are deleted in that commit.

Each repo gets a `distillery.json` naming the dataset and set it holds: a push into a repo
holding another dataset's (or another set's) files, or files distillery did not push, is
refused rather than mixed. The model card is uploaded as an edited copy whose `datasets:`
name the pushed dataset repos; the eval stage's card on disk stays as its manifest recorded
it. The token (`$HF_TOKEN` or a Prefect Secret block) is passed to the client as a value:
never logged, printed or saved.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows import secrets
from machinery import redact

logger = logging.getLogger(__name__)

MARKER = "distillery.json"
KEEP = (".gitattributes",)  # created by the Hub with every repo; never ours to delete
# One create_commit (atomic: a version is one commit) up to this size; above it upload_folder's resumable
# multi-commit upload (huggingface_hub >= 1.x with hf_xet: follow-up commits say "(part N)").
LARGE_BYTES = 20 * 2**30
# The Hub's own hosts: a Hub token may always go there; any other HF_ENDPOINT must be in $DISTILLERY_KEY_HOSTS.
HUB_HOSTS = ("huggingface.co", "*.huggingface.co", "*.hf.co")
CARD_LINK = "../../cards/{which}"  # how the eval stage's model card names the data cards (training.model_card)


class PushError(LookupError):
    """A push cannot start or was refused; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """One local folder and the repo it goes to."""

    what: str  # "sft", "grpo" (data cards) or "model"
    folder: Path
    repo_id: str
    repo_type: str  # "dataset" or "model"

    def files(self) -> list[Path]:
        """The folder's files, sorted (hidden folders such as a client's .cache/ left out)."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(self.folder).parts))

    def size(self) -> int:
        """Bytes in the folder's files."""
        return sum(p.stat().st_size for p in self.files())


def targets(run_dir: Path, repo: str, *, sft_repo: str | None = None, grpo_repo: str | None = None) -> list[Target]:
    """The three pushes of a run folder; a PushError naming the folder and the stage to run when one is missing."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PushError(f"--repo {repo!r}: give ORG/NAME (a user or organization, a slash, a repo name)")
    found = [Target("sft", run_dir / "cards" / "sft", sft_repo or f"{repo}-sft", "dataset"),
             Target("grpo", run_dir / "cards" / "grpo", grpo_repo or f"{repo}-grpo", "dataset"),
             Target("model", run_dir / "grpo" / "model", repo, "model")]
    for target, stage in zip(found, ("cards", "cards", "eval")):
        if not (target.folder / "README.md").is_file():
            raise PushError(f"{target.folder / 'README.md'}: not written yet; run `distillery {stage} --run "
                            f"{run_dir}` first")
    return found


def _human(size: float) -> str:
    """A byte count as `12.3 MB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def describe(run_dir: Path, found: list[Target], *, private: bool, endpoint: str) -> str:
    """What a push would send where, with sizes (the --dry-run output)."""
    lines = [(f"push {run_dir.parent.name} {run_dir.name} to {redact.url(endpoint)} "
              f"({'private' if private else 'public'} repos, tag {run_dir.name}):")]
    for target in found:
        files = target.files()
        lines.append(f"  {target.repo_type} {target.repo_id} <- {target.folder} ({len(files)} files, "
                     f"{_human(target.size())})")
        for path in files:
            note = " (edited copy: datasets point at the pushed data cards)" if (
                target.what == "model" and path.name == "README.md" and path.parent == target.folder) else ""
            lines.append(f"    {path.relative_to(target.folder)}  {_human(path.stat().st_size)}{note}")
        lines.append(f"    {MARKER}  (written at push: dataset, version, set)")
    return "\n".join(lines)


def token(block: str | None = None) -> str:
    """The Hub token: from the Prefect Secret block `block` if named, else $HF_TOKEN; PushError if neither has one."""
    if block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(block).get()
        except ValueError as error:  # Prefect's "Unable to find block document named ..."
            raise PushError(f"Prefect Secret block {block!r} (--token-block, publish.token_block): {error}; create "
                            f"it with prefect.blocks.system.Secret(value=...).save({block!r})") from None
    else:
        value = os.environ.get("HF_TOKEN", "")
    if not value:
        raise PushError("no Hugging Face token: set $HF_TOKEN to a token with write access "
                        "(https://huggingface.co/settings/tokens), or name a Prefect Secret block with --token-block")
    return value


def check_endpoint(endpoint: str) -> None:
    """PushError unless the token may go to `endpoint`'s host: the Hub's own, or one in $DISTILLERY_KEY_HOSTS."""
    host = secrets.host_of(endpoint)
    if not secrets.host_allowed(host, (*HUB_HOSTS, *secrets.allowed_key_hosts())):
        raise PushError(f"HF_ENDPOINT {redact.url(endpoint)!r}: the Hub token may go only to huggingface.co or "
                        f"the hosts in ${secrets.KEY_HOSTS} on this machine; add {host} there if it is your Hub")


def model_card(target: Target, dataset_ids: dict[str, str], endpoint: str) -> bytes:
    """The model card to upload: the eval stage's, with `datasets:` and the data card links on the pushed repos."""
    from huggingface_hub import ModelCard

    card = ModelCard((target.folder / "README.md").read_text())
    card.data.datasets = [dataset_ids["sft"], dataset_ids["grpo"]]
    text = str(card)
    for which, repo_id in dataset_ids.items():
        link = CARD_LINK.format(which=which)
        text = text.replace(f"({link}/README.md)", f"({endpoint.rstrip('/')}/datasets/{repo_id})")
        text = text.replace(f"`{link}`", f"`{repo_id}`")
    return text.encode()


def marker(run_dir: Path, target: Target) -> dict[str, str]:
    """What `distillery.json` says: the dataset, version and set a repo holds."""
    return {"pushed_by": "distillery", "dataset": run_dir.parent.name, "version": run_dir.name, "set": target.what}


def _check_lineage(api, run_dir: Path, target: Target, remote: list[str], tok: str) -> None:
    """PushError when the repo holds another dataset's or set's files, or files distillery did not push."""
    from huggingface_hub import hf_hub_download

    ours = [name for name in remote if name not in KEEP]
    if not ours:
        return
    where = f"{target.repo_type} repo {target.repo_id}"
    if MARKER not in ours:
        raise PushError(f"{where} holds files distillery did not push ({', '.join(ours[:5])}); push to another "
                        f"repo (--repo, --sft-repo, --grpo-repo) or empty that one first")
    with tempfile.TemporaryDirectory(prefix="distillery-push-") as cache:  # not the user's Hub cache
        theirs = json.loads(Path(hf_hub_download(target.repo_id, MARKER, repo_type=target.repo_type, token=tok,
                                                 endpoint=api.endpoint, cache_dir=cache)).read_text())
    theirs = theirs if isinstance(theirs, dict) else {}  # a marker that is no mapping names no dataset: refused
    mine = marker(run_dir, target)
    if (theirs.get("dataset"), theirs.get("set")) != (mine["dataset"], mine["set"]):
        raise PushError(f"{where} holds the {theirs.get('set')} set of dataset {theirs.get('dataset')!r} "
                        f"(version {theirs.get('version')}, its {MARKER}), not {mine['set']} of "
                        f"{mine['dataset']!r}; push to another repo (--repo, --sft-repo, --grpo-repo)")
    if _number(theirs.get("version")) > _number(mine["version"]) >= 0:
        raise PushError(f"{where} already holds version {theirs['version']}, newer than {mine['version']}: pushing "
                        f"{mine['version']} would put older files at its head; its tag {mine['version']} (if "
                        f"pushed before) names that version, or push it to another repo")


def _number(version: object) -> int:
    """N of a `vN` version; -1 for any other name (never ordered)."""
    match = re.fullmatch(r"v(\d+)", str(version))
    return int(match.group(1)) if match else -1


def _explain(error: Exception, target: Target) -> PushError | None:
    """A PushError for an HTTP refusal (bad token, no write access), or None for anything else."""
    from huggingface_hub.errors import HfHubHTTPError

    status = error.response.status_code if isinstance(error, HfHubHTTPError) and error.response is not None else None
    if status == 401:
        return PushError(f"{target.repo_type} repo {target.repo_id}: the Hub refused the token (401): it is invalid "
                         f"or expired; make a new one at https://huggingface.co/settings/tokens")
    if status == 403:
        return PushError(f"{target.repo_type} repo {target.repo_id}: the token may not write there (403); use a "
                         f"token with write access to {target.repo_id.split('/')[0]} (a fine-grained token needs "
                         f"'write' on that namespace), or push under a namespace you own (--repo)")
    return None


def push_one(api, run_dir: Path, target: Target, *, private: bool, tok: str, card: bytes | None = None,
             large_bytes: int = LARGE_BYTES) -> str:
    """Create the repo if new, check its lineage, commit the folder (deleting stale files), tag the version."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    version = run_dir.name
    api.create_repo(target.repo_id, repo_type=target.repo_type, private=private, exist_ok=True, token=tok)
    remote = [s.rfilename for s in api.repo_info(target.repo_id, repo_type=target.repo_type, token=tok).siblings or []]
    _check_lineage(api, run_dir, target, remote, tok)
    files = {str(p.relative_to(target.folder)): p for p in target.files()}
    extra = {MARKER: json.dumps(marker(run_dir, target), indent=2).encode() + b"\n"}
    if card is not None:
        extra["README.md"] = card
    stale = [name for name in remote if name not in KEEP and name not in files and name not in extra]
    message = f"{run_dir.parent.name} {version}: {target.what}"
    if target.size() <= large_bytes:
        operations = [*(CommitOperationDelete(name) for name in stale),
                      *(CommitOperationAdd(name, path) for name, path in files.items() if name not in extra),
                      *(CommitOperationAdd(name, content) for name, content in extra.items())]
        commit = api.create_commit(target.repo_id, operations, commit_message=message, repo_type=target.repo_type,
                                   token=tok)
    else:
        commit = _upload_large(api, target, files, extra, stale, message, tok)
    _tag(api, target, version, commit.oid, tok)
    logger.info("push: %s %s <- %s at %s, tag %s", target.repo_type, target.repo_id, target.folder,
                commit.oid[:12], version)
    return commit.oid


def _upload_large(api, target: Target, files: dict[str, Path], extra: dict[str, bytes], stale: list[str],
                  message: str, tok: str):
    """upload_folder from a staging folder of hard links (copies across file systems) plus the edited files.

    Staged, so that the client's resume state (`.cache/`) and the edited card never land in the run folder.
    """
    with tempfile.TemporaryDirectory(prefix="distillery-push-") as staging:
        root = Path(staging)
        for name, path in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, root / name)
            except OSError:
                shutil.copy2(path, root / name)
        for name, content in extra.items():
            (root / name).unlink(missing_ok=True)
            (root / name).write_bytes(content)
        return api.upload_folder(repo_id=target.repo_id, folder_path=root, repo_type=target.repo_type,
                                 commit_message=message, delete_patterns=stale or None, token=tok)


def _tag(api, target: Target, version: str, oid: str, tok: str) -> None:
    """Tag `oid` with the version; a tag of the same name elsewhere (a re-pushed version) is moved, saying so."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(target.repo_id, tag=version, revision=oid, repo_type=target.repo_type, token=tok)
    except HfHubHTTPError as error:
        if error.response is None or error.response.status_code != 409:
            raise
        refs = api.list_repo_refs(target.repo_id, repo_type=target.repo_type, token=tok)
        if any(tag.name == version and tag.target_commit == oid for tag in refs.tags):
            return
        logger.warning("push: %s already had tag %s on another commit (this version pushed again); moving it to %s",
                       target.repo_id, version, oid[:12])
        api.delete_tag(target.repo_id, tag=version, repo_type=target.repo_type, token=tok)
        api.create_tag(target.repo_id, tag=version, revision=oid, repo_type=target.repo_type, token=tok)


def push(run_dir: Path, repo: str, *, private: bool = True, token_block: str | None = None, dry_run: bool = False,
         sft_repo: str | None = None, grpo_repo: str | None = None, large_bytes: int = LARGE_BYTES) -> str:
    """Push a run's data cards and model (or, with dry_run, only describe it); return the report to print."""
    from huggingface_hub import HfApi, constants

    run_dir = Path(run_dir)
    found = targets(run_dir, repo, sft_repo=sft_repo, grpo_repo=grpo_repo)
    endpoint = constants.ENDPOINT
    plan = describe(run_dir, found, private=private, endpoint=endpoint)
    if dry_run:
        return plan + "\n(dry run: nothing sent)"
    check_endpoint(endpoint)
    tok = token(token_block)
    api = HfApi(endpoint=endpoint)
    ids = {t.what: t.repo_id for t in found if t.repo_type == "dataset"}
    lines = [plan]
    for target in found:
        card = model_card(target, ids, endpoint) if target.what == "model" else None
        try:
            oid = push_one(api, run_dir, target, private=private, tok=tok, card=card, large_bytes=large_bytes)
        except Exception as error:
            explained = _explain(error, target)
            if explained is None:
                raise
            raise explained from None
        lines.append(f"pushed {target.repo_type} {target.repo_id}: commit {oid[:12]}, tag {run_dir.name}")
    return "\n".join(lines)
