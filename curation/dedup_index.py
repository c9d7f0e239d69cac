"""The dedup index of a dataset's versions, so a refresh keeps only rows new to all of them.

`LocalIndex` keeps one parquet file per version in `runs/<dataset>/dedup-index/` (ids,
exact keys, MinHash signatures) and bands earlier and new signatures together in NumPy.
`RedisIndex` keeps the same facts in Redis, the LSH buckets through datasketch's
`MinHashLSH(storage_config={"type": "redis", ...}, prepickle=False)`, for several machines
sharing one index. Its keys are plain bytes: nothing read from Redis is ever unpickled, so
whoever can write to the server cannot run code in a later dedup, and an index written with
datasketch's default pickled keys is refused, not read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

import numpy as np
import polars as pl

from curation import minhash
from machinery import redact, store

if TYPE_CHECKING:
    from curation.dedup import Params
    from machinery.config import DedupConfig

INDEX_DIR = "dedup-index"
Match = tuple[str, float, str]  # (id it duplicates, estimated Jaccard, version it is in)


def version_order(name: str) -> list[object]:
    """Natural sort key: v2 < v10, 2026-01-02 < 2026-01-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _fingerprint(ids: list[str], sigs: np.ndarray) -> str:
    """Content hash of a version's entry."""
    digest = hashlib.sha256("\n".join(ids).encode())
    digest.update(np.ascontiguousarray(sigs).tobytes())
    return digest.hexdigest()


class VersionIndex(Protocol):
    """What the dedup stage needs of an index of earlier versions."""

    def versions(self) -> list[str]:
        """The versions earlier than the current one."""

    def match(self, keys: list[str], sigs: np.ndarray, params: Params) -> list[Match | None]:
        """For each new row, the earlier row it duplicates (exact first, else best near), or None."""

    def add(self, ids: list[str], keys: list[str], sigs: np.ndarray) -> None:
        """Record the current version's kept rows."""

    def has_current(self) -> bool:
        """Whether the current version is recorded."""

    def fingerprint(self) -> dict[str, str]:
        """Content hashes of the earlier versions' entries (stage inputs)."""


def _best_near(new_sigs: np.ndarray, old_sigs: np.ndarray, params: Params) -> dict[int, tuple[int, float]]:
    """For each new row with an old row at >= threshold: the most similar (old row, Jaccard)."""
    best: dict[int, tuple[int, float]] = {}
    for new, old, score in minhash.cross_matches(new_sigs, old_sigs, params.bands, params.rows, params.threshold):
        if score > best.get(new, (-1, -1.0))[1]:
            best[new] = (old, score)
    return best


class LocalIndex:
    """One parquet file per version under `<dataset>/dedup-index/`."""

    def __init__(self, dataset_dir: Path, version: str, params: Params):
        self.folder = dataset_dir / INDEX_DIR
        self.version = version
        self.params = params

    def _path(self, version: str) -> Path:
        return self.folder / f"{version}.parquet"

    def versions(self) -> list[str]:
        """Versions with an index entry that sort before the current one."""
        if not self.folder.is_dir():
            return []
        names = [p.name.removesuffix(".parquet") for p in self.folder.glob("*.parquet")]
        return sorted((n for n in names if version_order(n) < version_order(self.version)), key=version_order)

    def _load(self) -> tuple[list[str], list[str], np.ndarray, list[str]]:
        frames = []
        for version in self.versions():
            frame = pl.read_parquet(self._path(version))
            meta = frame["params"][0] if frame.height else self._params_json()
            if meta != self._params_json():
                raise ValueError(f"{self._path(version)} was built with MinHash params {meta}, not "
                                 f"{self._params_json()}; rebuild the index or keep num_perm/shingle")
            frames.append(frame.with_columns(version=pl.lit(version)))
        if not frames:
            return [], [], np.empty((0, self.params.num_perm), np.uint32), []
        frame = pl.concat(frames)
        sigs = np.frombuffer(b"".join(frame["sig"].to_list()), dtype=np.uint32).reshape(frame.height, -1)
        return frame["id"].to_list(), frame["key"].to_list(), sigs, frame["version"].to_list()

    def _params_json(self) -> str:
        return json.dumps({"num_perm": self.params.num_perm, "shingle": self.params.shingle,
                           "seed": self.params.seed}, sort_keys=True)

    def match(self, keys: list[str], sigs: np.ndarray, params: Params) -> list[Match | None]:
        """Earlier rows that new rows duplicate."""
        old_ids, old_keys, old_sigs, old_versions = self._load()
        by_key = {k: i for i, k in reversed(list(enumerate(old_keys)))}
        near = _best_near(sigs, old_sigs, params)
        found: list[Match | None] = []
        for row, key in enumerate(keys):
            if key in by_key:
                i = by_key[key]
                found.append((old_ids[i], 1.0, old_versions[i]))
            elif row in near:
                i, score = near[row]
                found.append((old_ids[i], score, old_versions[i]))
            else:
                found.append(None)
        return found

    def add(self, ids: list[str], keys: list[str], sigs: np.ndarray) -> None:
        """Write the current version's entry atomically."""
        frame = pl.DataFrame({"id": ids, "key": keys, "sig": [row.tobytes() for row in sigs]},
                             schema={"id": pl.String, "key": pl.String, "sig": pl.Binary})
        store.write_parquet(frame.with_columns(params=pl.lit(self._params_json())), self._path(self.version))

    def has_current(self) -> bool:
        return self._path(self.version).is_file()

    def fingerprint(self) -> dict[str, str]:
        return {f"index:{v}": store.file_hash(self._path(v)) for v in self.versions()}


REDIS_URL_ENV = "DISTILLERY_REDIS_URL"
# What this version writes: LSH keys are the row ids' UTF-8 bytes (datasketch prepickle=False).
# An index without this marker was written with datasketch's default, pickled keys.
REDIS_FORMAT = b"bytes-keys-1"
_PICKLE = b"\x80"  # the first byte of every pickle since protocol 2


class LegacyIndexError(RuntimeError):
    """A Redis index written with pickled keys: never read, since unpickling runs its writer's code."""


class RedisIndex:
    """The same index in Redis: LSH buckets through datasketch (bytes keys, no pickles), signatures in hashes."""

    def __init__(self, url: str, basename: str, version: str, params: Params):
        import redis
        from datasketch import MinHashLSH

        # The whole URL: user, password, db and rediss:// TLS, with one connection pool for
        # this class and datasketch's storage alike.
        self.redis = redis.Redis.from_url(url)
        self.where = redact.url(url)
        self.base = f"distillery:{basename}"
        self.version = version
        self.params = params
        self._refuse_legacy()
        self.lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, params=(params.bands, params.rows),
                              storage_config={"type": "redis", "basename": self.base.encode(),
                                              "redis": {"connection_pool": self.redis.connection_pool}},
                              prepickle=False)

    def _legacy(self, detail: str) -> LegacyIndexError:
        pattern = f"{self.base}[:_]*"
        return LegacyIndexError(
            f"Redis index {self.base!r} at {self.where} {detail}: it was written by an older distillery, which "
            f"stored pickled keys, and is not read (unpickling runs whatever code its writer put there). Delete it "
            f"(redis-cli -u URL --scan --pattern '{pattern}' | xargs redis-cli -u URL del) and rebuild it by "
            f"re-running dedup on the earlier versions, oldest first, or use dedup.index=local")

    def _refuse_legacy(self) -> None:
        """LegacyIndexError when the index holds versions but not this version's format marker."""
        marker = self.redis.get(f"{self.base}:format")
        if marker == REDIS_FORMAT:
            return
        if marker is not None:
            raise self._legacy(f"has format {marker!r}, not {REDIS_FORMAT!r}")
        if self.redis.exists(f"{self.base}:fingerprints"):
            raise self._legacy("has versions but no format marker")

    def _lean(self, sig: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.params.seed, hashvalues=sig, scheme="affine32")

    def versions(self) -> list[str]:
        """Versions with an index entry that sort before the current one."""
        names = [v.decode() for v in self.redis.hkeys(f"{self.base}:fingerprints")]
        return sorted((n for n in names if version_order(n) < version_order(self.version)), key=version_order)

    def _earlier(self, version: bytes | None) -> bool:
        return version is not None and version_order(version.decode()) < version_order(self.version)

    def _candidates(self, sig: np.ndarray) -> list[bytes]:
        """Row ids (bytes) sharing a band with `sig`; a pickled one is refused, never loaded."""
        found = self.lsh.query(self._lean(sig))
        if any(c.startswith(_PICKLE) for c in found):
            raise self._legacy("holds pickled LSH keys")
        return found

    def match(self, keys: list[str], sigs: np.ndarray, params: Params) -> list[Match | None]:
        """Exact keys by hash lookup, near rows by datasketch LSH queries verified by Jaccard."""
        found: list[Match | None] = []
        exact_ids = self.redis.hmget(f"{self.base}:exact", keys) if keys else []
        for key_hit, sig in zip(exact_ids, sigs):
            if key_hit is not None:
                version = self.redis.hget(f"{self.base}:version", key_hit)
                if self._earlier(version):
                    found.append((key_hit.decode(), 1.0, version.decode()))
                    continue
            best: Match | None = None
            candidates = self._candidates(sig)
            if candidates:
                stored = self.redis.hmget(f"{self.base}:sig", candidates)
                versions = self.redis.hmget(f"{self.base}:version", candidates)
                for cid, raw, version in zip(candidates, stored, versions):
                    if raw is None or not self._earlier(version):
                        continue
                    score = float((np.frombuffer(raw, dtype=np.uint32) == sig).mean())
                    if score >= params.threshold and (best is None or score > best[1]):
                        best = (cid.decode(), score, version.decode())
            found.append(best)
        return found

    def add(self, ids: list[str], keys: list[str], sigs: np.ndarray) -> None:
        """Insert the current version's rows into the LSH and the hashes."""
        self.redis.set(f"{self.base}:format", REDIS_FORMAT)
        with self.lsh.insertion_session() as session:
            for row_id, sig in zip(ids, sigs):
                if row_id.encode() not in self.lsh:
                    session.insert(row_id.encode(), self._lean(sig))
        pipe = self.redis.pipeline()
        for row_id, key, sig in zip(ids, keys, sigs):
            pipe.hset(f"{self.base}:sig", row_id, sig.tobytes())
            pipe.hset(f"{self.base}:version", row_id, self.version)
            pipe.hsetnx(f"{self.base}:exact", key, row_id)
        pipe.hset(f"{self.base}:fingerprints", self.version, _fingerprint(ids, sigs))
        pipe.execute()

    def has_current(self) -> bool:
        """Whether the current version is recorded."""
        return bool(self.redis.hexists(f"{self.base}:fingerprints", self.version))

    def fingerprint(self) -> dict[str, str]:
        """Content hashes of the earlier versions' entries."""
        return {f"index:{v}": self.redis.hget(f"{self.base}:fingerprints", v).decode() for v in self.versions()}


def _address(url: str) -> tuple[str, int, int]:
    """(host, port, db) of a Redis URL: which server and database it names, whatever the credentials."""
    parsed = urlparse(url)
    return (parsed.hostname or "localhost").lower(), parsed.port or 6379, int(parsed.path.strip("/") or 0)


def redis_url(config: DedupConfig) -> str:
    """The index's Redis URL: the worker's $DISTILLERY_REDIS_URL (credentials, TLS) or `dedup.redis_url`.

    A config holds no credentials (machinery.config refuses them), so a password reaches
    Redis only through the operator's environment, and only to the server that variable
    names: a config naming another server is refused rather than sent the password.
    """
    from_env = os.environ.get(REDIS_URL_ENV, "").strip()
    if from_env:
        if config.redis_url and _address(config.redis_url) != _address(from_env):
            raise ValueError(f"dedup.redis_url={config.redis_url!r} names another server than ${REDIS_URL_ENV} "
                             f"({redact.url(from_env)}), whose credentials go to its own server only: unset "
                             f"dedup.redis_url or make the two agree")
        return from_env
    if not config.redis_url:
        raise ValueError(f"dedup.index=redis needs dedup.redis_url, e.g. redis://127.0.0.1:6379/0 (or the whole URL, "
                         f"credentials included, in ${REDIS_URL_ENV})")
    return config.redis_url


def open_index(config: DedupConfig, run_dir: Path, params: Params) -> VersionIndex:
    """The configured index for the dataset that `run_dir` (runs/<dataset>/<version>) belongs to."""
    run_dir = run_dir.resolve()
    if config.index == "redis":
        return RedisIndex(redis_url(config), run_dir.parent.name, run_dir.name, params)
    return LocalIndex(run_dir.parent, run_dir.name, params)
