"""Phase (a) of the dedup stage: per row shard, what the later phases need of its rows, kept beside the shard.

A task reads its own rows from the pull output (never through the driver) and writes
- `sig/<label>.npy`: its MinHash signatures (rows x num_perm, uint32), which later phases
  memory-map (`np.load(mmap_mode="r")`): signatures are never shuffled, only looked up;
- `part/<p>/<label>.npy`: one record (band, key, doc) per row and LSH band, plus one per row
  for its exact key (band = `bands`), those with `key % P == p`, sorted by (band, key, doc):
  what phase (b) merges, partition by partition (datatrove's per-band signature files);
- its `keys` table (exact key as hex, for the Redis index; the first benchmark item with the
  same normalized text, or -1) and its `hits` table (the benchmark word n-grams each row shares).
Docs are numbered by their row in the pull output, so no id passes between tasks.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curation import minhash
from machinery import store
from machinery.shards import ShardOutput

SIGNATURES = "dedup.signatures"
# Fixed-width shuffle records: 20 bytes per (doc, band). Packed, so a file is exactly its records.
RECORD = np.dtype([("band", "<u4"), ("key", "<u8"), ("doc", "<u8")])
# About 40 MB of records per partition: bounds phase (b)'s memory whatever the corpus size.
PARTITION_RECORDS = 1 << 21
MIN_PARTITIONS = 4  # some parallelism for phase (b) even on small inputs


@dataclass(frozen=True, kw_only=True)
class Hashing:
    """What a shard needs to hash its rows: MinHash and LSH parameters, and the benchmarks' n-grams."""

    shingle: int
    num_perm: int
    seed: int
    bands: int
    rows: int
    ngram: int
    bench_grams: np.ndarray  # sorted unique 64-bit hashes of the benchmarks' word n-grams
    bench_first: dict[str, int]  # exact key -> first benchmark item with that normalized text
    partitions: int


def exact_keys(texts: list[str]) -> list[str]:
    """A short hash of each normalized text: equal keys mean exact duplicates."""
    return [hashlib.blake2b(t.encode(), digest_size=12).hexdigest() for t in minhash.normalize_many(texts)]


def key64(keys: list[str]) -> np.ndarray:
    """The first 64 bits of each hex exact key: the shuffle key of the exact-duplicate records."""
    if not keys:
        return np.empty(0, dtype=np.uint64)
    return np.frombuffer(bytes.fromhex("".join(k[:16] for k in keys)), dtype=">u8").astype(np.uint64)


def partition_count(n_rows: int, bands: int) -> int:
    """P, a power of two, so that a partition holds about PARTITION_RECORDS records at most."""
    needed = -(-n_rows * (bands + 1) // PARTITION_RECORDS)
    return max(MIN_PARTITIONS, 1 << max(0, needed - 1).bit_length())


def sig_path(folder: Path, label: str) -> Path:
    """Where a row shard's signatures lie."""
    return folder / "sig" / f"{label}.npy"


def part_path(folder: Path, partition: int, label: str) -> Path:
    """Where a row shard's records of one partition lie."""
    return folder / "part" / f"{partition:05d}" / f"{label}.npy"


def save_array(array: np.ndarray, path: Path) -> None:
    """An .npy file written atomically (a killed task leaves the old file or none)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    store.atomic_write_bytes(path, buffer.getvalue())


def records(band_keys: np.ndarray, exact: np.ndarray, start: int) -> np.ndarray:
    """Records of rows start.. : one per (row, band) and one per row for the exact key, sorted."""
    n, bands = band_keys.shape
    out = np.empty(n * (bands + 1), dtype=RECORD)
    out["band"] = np.repeat(np.arange(bands + 1, dtype=np.uint32), n)
    out["key"] = np.concatenate([band_keys.T.ravel(), exact])
    out["doc"] = np.tile(np.arange(start, start + n, dtype=np.uint64), bands + 1)
    return out[np.lexsort((out["doc"], out["key"], out["band"]))]


def split(recs: np.ndarray, partitions: int) -> list[np.ndarray]:
    """Records by partition (`key % P`), each keeping its sorted order."""
    which = recs["key"] & np.uint64(partitions - 1)
    return [recs[which == p] for p in range(partitions)]


def ngram_hits(texts: list[str], bench_grams: np.ndarray, n: int, offset: int = 0, chunk: int = 10_000
               ) -> np.ndarray:
    """Unique (n-gram hash, row) pairs, rows numbered from `offset`, of the n-grams also in `bench_grams`.

    A chunk of rows at a time: every word window of a chunk is hashed at once (about 50 bytes
    per window), so chunks bound a shard task's memory.
    """
    if not len(bench_grams) or not texts:
        return np.empty((0, 2), dtype=np.uint64)
    if len(texts) > chunk:
        found = [_ngram_hits(texts[lo : lo + chunk], bench_grams, n, offset + lo) for lo in range(0, len(texts), chunk)]
        return np.unique(np.concatenate(found), axis=0)
    return _ngram_hits(texts, bench_grams, n, offset)


def _ngram_hits(texts: list[str], bench_grams: np.ndarray, n: int, offset: int) -> np.ndarray:
    words, lengths = minhash.word_hashes(minhash.normalize_many(texts), {})
    hashes, counts = minhash.window_hashes(words, lengths, n, short=False, wide=True)
    owner = np.repeat(np.arange(offset, offset + len(texts), dtype=np.uint64), counts)
    at = np.minimum(np.searchsorted(bench_grams, hashes), len(bench_grams) - 1)
    hit = bench_grams[at] == hashes
    return np.unique(np.stack([hashes[hit], owner[hit]], axis=1), axis=0)


def hash_shard(item: tuple[str, int, int], *, source: Path, folder: Path, hashing: Hashing) -> ShardOutput:
    """Phase (a) for rows [start, stop) of `source`: signatures, partition records, keys and n-gram hits."""
    label, start, stop = item
    texts = store.read_rows(source, start, stop, ["problem"])["problem"].to_list()
    sigs = minhash.signatures(texts, shingle=hashing.shingle, num_perm=hashing.num_perm, seed=hashing.seed)
    keys = exact_keys(texts)
    recs = records(minhash.band_keys(sigs, hashing.bands, hashing.rows), key64(keys), start)
    for partition, part in enumerate(split(recs, hashing.partitions)):
        save_array(part, part_path(folder, partition, label))
    save_array(sigs, sig_path(folder, label))  # last: phase (b) may look up any row once the marker is down
    hits = ngram_hits(texts, hashing.bench_grams, hashing.ngram, start)
    bench = [hashing.bench_first.get(k, -1) for k in keys]
    return ShardOutput(tables={"keys": pl.DataFrame({"key": keys, "bench": bench},
                                                    schema={"key": pl.String, "bench": pl.Int64}),
                               "hits": pl.DataFrame({"gram": hits[:, 0], "row": hits[:, 1]},
                                                    schema={"gram": pl.UInt64, "row": pl.UInt64})},
                       counts={"rows": len(texts)})


class Signatures:
    """Signatures of any docs, read from the row shards' memory-mapped arrays.

    A shard's array is mapped only while its rows are copied out: pages a mapping touched count
    in the process's resident memory until it is unmapped, so a cache of open maps would grow
    with the corpus (every shard's signatures) instead of with one shard.
    """

    def __init__(self, folder: Path, labels: list[str], starts: np.ndarray):
        self.paths = [sig_path(folder, label) for label in labels]
        self.starts = np.asarray(starts, dtype=np.int64)  # shard s holds docs starts[s] .. starts[s+1]-1

    def rows(self, docs: np.ndarray) -> np.ndarray:
        """The signatures of docs, in the order given."""
        docs = np.asarray(docs, dtype=np.int64)
        shard = np.searchsorted(self.starts, docs, side="right") - 1
        out: np.ndarray | None = None
        for s in np.unique(shard):
            sigs = np.load(self.paths[int(s)], mmap_mode="r")
            if out is None:
                out = np.empty((len(docs), sigs.shape[1]), dtype=np.uint32)
            at = shard == s
            out[at] = sigs[docs[at] - self.starts[s]]
            del sigs  # unmapped here: its pages leave this process's resident memory
        return out if out is not None else np.empty((0, 0), dtype=np.uint32)

    def jaccard(self, left: np.ndarray, right: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Estimated Jaccard of docs left[k] and right[k] (as `minhash.jaccard`), a chunk at a time."""
        out = np.empty(len(left))
        for lo in range(0, len(left), chunk):
            a, b = self.rows(left[lo : lo + chunk]), self.rows(right[lo : lo + chunk])
            out[lo : lo + chunk] = (a == b).mean(axis=1)
        return out
