"""A local stand-in of the Hugging Face Hub endpoints a push uses, for huggingface_hub's own client.

`HF_ENDPOINT` (huggingface_hub.constants.ENDPOINT) pointed at `HubStandIn().url` serves:
repo create and info, README YAML validation, preupload (which files go through LFS), the
LFS batch API with basic PUT uploads and verify, the ndjson commit, tags and refs, and
file resolve (HEAD and GET), the recursive tree listing. Not the Xet protocol: tests set HF_HUB_DISABLE_XET, so the
client takes the LFS path. Everything received is kept in `repos` for byte-for-byte checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

LFS_SUFFIXES = (".safetensors", ".parquet", ".png", ".bin", ".pt")
_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+?)(?:/(preupload|commit|tag|refs|revision|tree)(?:/(.+))?)?$")
_LFS_BATCH = re.compile(r"^/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of `data` (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's own hash, not a security use


@dataclass
class Repo:
    """One repo's state: files at the head, commits (oid, message, paths touched) and tags."""

    private: bool
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": b"*.safetensors filter=lfs\n"})
    lfs_paths: set[str] = field(default_factory=set)  # files committed as lfsFile
    commits: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        """The latest commit's oid (a made-up one for the creation commit)."""
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class HubStandIn:
    """A threaded HTTP server speaking the push endpoints; `tokens` maps token -> namespaces it may write."""

    def __init__(self, tokens: dict[str, set[str]]):
        self.tokens = tokens
        self.repos: dict[tuple[str, str], Repo] = {}  # (model|dataset, org/name) -> Repo
        self.lfs: dict[str, bytes] = {}  # sha256 -> bytes received by PUT
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, kind: str, repo_id: str) -> Repo:
        """A repo by kind (`model` or `dataset`) and id; KeyError if never created."""
        return self.repos[(kind, repo_id)]


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to `hub`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet: tests read hub.requests instead
            pass

        def _reply(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
                   body: bytes | None = None) -> None:
            data = body if body is not None else json.dumps(payload if payload is not None else {}).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _body(self) -> bytes:
            """The request body, read once up front: a reply that ignores it must not leave it on the connection."""
            return self.raw

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

        def _may_write(self, repo_id: str) -> bool:
            """Reply 401 (unknown token) or 403 (no write on the namespace) and return False, or return True."""
            token = self._token()
            if token not in hub.tokens:
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return False
            if repo_id.split("/")[0] not in hub.tokens[token]:
                self._reply(403, {"error": f"You don't have the rights to write to {repo_id}"})
                return False
            return True

        def _find(self, kind: str, repo_id: str) -> Repo | None:
            repo = hub.repos.get((kind, repo_id))
            if repo is None or (repo.private and self._token() not in hub.tokens):
                self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return None
            return repo

        def _dispatch(self) -> None:
            hub.requests.append((self.command, self.path, dict(self.headers)))
            self.raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            with hub.lock:
                if path == "/api/repos/create":
                    return self._create(json.loads(self._body()))
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if path.startswith("/lfs-upload/"):
                    return self._lfs_put(path.rsplit("/", 1)[1])
                if path == "/lfs-verify":
                    oid = json.loads(self._body())["oid"]
                    return self._reply(200 if oid in hub.lfs else 404, {})
                if match := _LFS_BATCH.match(path):
                    return self._lfs_batch(match[2], json.loads(self._body()))
                if match := _RESOLVE.match(path):
                    return self._resolve("dataset" if match[1] else "model", match[2], match[4])
                if match := _API.match(path):
                    return self._api(match[1][:-1], match[2], match[3], match[4])
            self._reply(404, {"error": f"stand-in: no route for {self.command} {path}"})

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

        def _create(self, payload: dict[str, Any]) -> None:
            repo_id = f"{payload['organization']}/{payload['name']}"
            kind = payload.get("type") or "model"
            if not self._may_write(repo_id):
                return None
            if (kind, repo_id) in hub.repos:
                return self._reply(409, {"error": "You already created this repo", "url": f"{hub.url}/{repo_id}"})
            hub.repos[(kind, repo_id)] = Repo(private=payload.get("visibility") == "private")
            prefix = "datasets/" if kind == "dataset" else ""
            return self._reply(200, {"url": f"{hub.url}/{prefix}{repo_id}"})

        def _api(self, kind: str, repo_id: str, action: str | None, rest: str | None) -> None:
            repo = self._find(kind, repo_id)
            if repo is None:
                return None
            if action in (None, "revision") and self.command == "GET":
                return self._reply(200, {"id": repo_id, "sha": repo.head, "private": repo.private,
                                         "siblings": [{"rfilename": name} for name in sorted(repo.files)]})
            if action == "tree":  # recursive listing of the head, one page
                return self._reply(200, [{"type": "file", "path": name, "size": len(data), "oid": git_blob_oid(data)}
                                         for name, data in sorted(repo.files.items())])
            if action == "refs":
                return self._reply(200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                       "targetCommit": repo.head}], "converts": [],
                                         "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid}
                                                  for t, oid in repo.tags.items()]})
            if not self._may_write(repo_id):
                return None
            body = self._body()
            if action == "preupload":
                return self._reply(200, {"files": [self._mode(repo, f) for f in json.loads(body)["files"]]})
            if action == "commit":
                return self._commit(repo, kind, repo_id, body)
            if action == "tag" and self.command == "POST":
                tag = json.loads(body)["tag"]
                if tag in repo.tags:
                    return self._reply(409, {"error": f"Tag {tag} already exists"})
                repo.tags[tag] = rest if rest != "main" else repo.head
                return self._reply(200, {})
            if action == "tag" and self.command == "DELETE":
                repo.tags.pop(rest, None)
                return self._reply(200, {})
            return self._reply(404, {"error": f"stand-in: no action {action}"})

        def _mode(self, repo: Repo, file: dict[str, Any]) -> dict[str, Any]:
            path = file["path"]
            lfs = path.endswith(LFS_SUFFIXES) or file["size"] >= 10 * 2**20
            old = repo.files.get(path)
            oid = None if old is None else (hashlib.sha256(old).hexdigest() if path in repo.lfs_paths
                                            else git_blob_oid(old))
            return {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}

        def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
            if not self._may_write(repo_id):
                return None
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:  # already stored: no actions, the client skips the upload
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"},
                                        "verify": {"href": f"{hub.url}/lfs-verify"}}
                objects.append(entry)
            return self._reply(200, {"transfer": "basic", "objects": objects})

        def _lfs_put(self, oid: str) -> None:
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                return self._reply(400, {"error": "sha256 mismatch"})
            hub.lfs[oid] = data
            return self._reply(200, {})

        def _commit(self, repo: Repo, kind: str, repo_id: str, body: bytes) -> None:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            touched = []
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                    repo.lfs_paths.discard(value["path"])
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    repo.files[value["path"]] = hub.lfs[value["oid"]]
                    repo.lfs_paths.add(value["path"])
                elif key == "deletedFile":
                    repo.files.pop(value["path"], None)
                else:
                    continue
                touched.append((key, value["path"]))
            oid = hashlib.sha1(f"{repo_id}{len(repo.commits)}{header['summary']}".encode()).hexdigest()
            repo.commits.append({"oid": oid, "message": header["summary"], "touched": touched})
            prefix = "datasets/" if kind == "dataset" else ""
            return self._reply(200, {"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid})

        def _resolve(self, kind: str, repo_id: str, path: str) -> None:
            repo = self._find(kind, repo_id)
            if repo is None:
                return None
            if path not in repo.files:
                return self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                      "X-Repo-Commit": repo.head})
            data = repo.files[path]
            return self._reply(200, body=data, headers={"Content-Type": "application/octet-stream",
                                                        "X-Repo-Commit": repo.head, "ETag": f'"{git_blob_oid(data)}"'})

    return Handler
