"""The dedup index of a dataset's versions, so a refresh keeps only rows new to all of them.

`LocalIndex` keeps one parquet file per version in `runs/<dataset>/dedup-index/` (ids,
exact keys, MinHash signatures); the dedup stage reads them shard by shard into its own
partitions (`curation.dedup_earlier`), so matching them is the same LSH rule as within a version.
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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from machinery import redact, store

if TYPE_CHECKING:
    from curation.dedup import Params
    from machinery.config import DedupConfig

INDEX_DIR = "dedup-index"
Match = tuple[str, float, str]  # (id it duplicates, estimated Jaccard, version it is in)


def version_order(name: str) -> list[object]:
    """Natural sort key: v2 < v10, 2026-01-02 < 2026-01-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class _Fingerprint:
    """Content hash of a version's entry (ids, then signatures), given a shard at a time: the same however cut."""

    def __init__(self) -> None:
        self.ids = hashlib.sha256()
        self.sigs = hashlib.sha256()
        self.rows = 0

    def update(self, ids: list[str], sigs: np.ndarray) -> None:
        for row_id in ids:
            self.ids.update(("\n" if self.rows else "").encode() + row_id.encode())
            self.rows += 1
        self.sigs.update(np.ascontiguousarray(sigs).tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(self.ids.digest() + self.sigs.digest()).hexdigest()


class VersionIndex(Protocol):
    """What the dedup stage needs of an index of earlier versions.

    It finds earlier rows one of two ways: `LocalIndex` gives its versions' files
    (`entries()`), whose rows join the stage's partitions; another index (Redis) is asked
    row shard by row shard through `match(keys, sigs, params) -> list[Match | None]`: for each
    new row, the earlier row it duplicates (exact first, else the most similar), or None.
    """

    def versions(self) -> list[str]:
        """The versions earlier than the current one."""

    def add(self, ids: list[str], keys: list[str], sigs: np.ndarray) -> None:
        """Record the current version's kept rows."""

    def add_chunks(self, chunks: Iterable[tuple[list[str], list[str], np.ndarray]]) -> None:
        """Record the current version's kept rows, given a shard at a time (ids, keys, signatures)."""

    def has_current(self) -> bool:
        """Whether the current version is recorded."""

    def fingerprint(self) -> dict[str, str]:
        """Content hashes of the earlier versions' entries (stage inputs)."""


def _binary_rows(sigs: np.ndarray) -> pa.Array:
    """Each signature row as one binary value, built on the array's bytes (no Python object per row)."""
    data = np.ascontiguousarray(sigs, dtype=np.uint32)
    width = data.shape[1] * 4 if data.ndim == 2 else 0
    offsets = np.arange(len(data) + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


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

    def entries(self) -> list[tuple[str, Path]]:
        """(version, parquet file) of each earlier version, oldest first, each checked to have our MinHash params.

        The dedup stage reads them shard by shard (`dedup_earlier`): their rows take part in its
        partitions beside the current rows, so no process holds a whole earlier version.
        """
        found = []
        for version in self.versions():
            path = self._path(version)
            meta = store.read_rows(path, 0, 1, ["params"])["params"].to_list()
            if meta and meta[0] != self._params_json():
                raise ValueError(f"{path} was built with MinHash params {meta[0]}, not {self._params_json()}; "
                                 f"rebuild the index or keep num_perm/shingle")
            found.append((version, path))
        return found

    def _params_json(self) -> str:
        return json.dumps({"num_perm": self.params.num_perm, "shingle": self.params.shingle,
                           "seed": self.params.seed}, sort_keys=True)

    def add(self, ids: list[str], keys: list[str], sigs: np.ndarray) -> None:
        """Write the current version's entry atomically."""
        self.add_chunks([(ids, keys, sigs)])

    def add_chunks(self, chunks: Iterable[tuple[list[str], list[str], np.ndarray]]) -> None:
        """Write the current version's entry atomically, a shard at a time (row groups of fixed size).

        Fixed row groups: the file's bytes, hence the next version's stage key, do not depend
        on how the rows were cut into shards.
        """
        schema = pa.schema([("id", pa.string()), ("key", pa.string()), ("sig", pa.binary()), ("params", pa.string())])
        meta = self._params_json()
        path = self._path(self.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid() % 10**8:08d}.tmp")  # a leftover `store.sweep` knows
        with pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=False) as writer:
            pending = pa.Table.from_batches([], schema=schema)
            for ids, keys, sigs in chunks:
                chunk = pa.table({"id": pa.array(ids, pa.string()), "key": pa.array(keys, pa.string()),
                                  "sig": _binary_rows(sigs), "params": pa.array([meta] * len(ids), pa.string())},
                                 schema=schema)
                pending = pa.concat_tables([pending, chunk])
                while pending.num_rows >= store.ROW_GROUP_ROWS:
                    writer.write_table(pending.slice(0, store.ROW_GROUP_ROWS).combine_chunks())
                    pending = pending.slice(store.ROW_GROUP_ROWS)
            writer.write_table(pending.combine_chunks())
        os.replace(tmp, path)

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
        self.add_chunks([(ids, keys, sigs)])

    def add_chunks(self, chunks: Iterable[tuple[list[str], list[str], np.ndarray]]) -> None:
        """Insert the current version's rows, a shard at a time; the version's fingerprint last."""
        self.redis.set(f"{self.base}:format", REDIS_FORMAT)
        digest = _Fingerprint()
        for ids, keys, sigs in chunks:
            with self.lsh.insertion_session() as session:
                for row_id, sig in zip(ids, sigs):
                    if row_id.encode() not in self.lsh:
                        session.insert(row_id.encode(), self._lean(sig))
            pipe = self.redis.pipeline()
            for row_id, key, sig in zip(ids, keys, sigs):
                pipe.hset(f"{self.base}:sig", row_id, sig.tobytes())
                pipe.hset(f"{self.base}:version", row_id, self.version)
                pipe.hsetnx(f"{self.base}:exact", key, row_id)
            pipe.execute()
            digest.update(ids, sigs)
        self.redis.hset(f"{self.base}:fingerprints", self.version, digest.hexdigest())

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
