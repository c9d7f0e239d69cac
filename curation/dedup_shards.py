"""The dedup stage's per-row work, cut into shards that run wherever the executor puts them.

Three kinds of work, each the same on one process and on a cluster:
- per row shard (`features`): exact keys, MinHash signatures, LSH band keys, and the word
  n-grams the rows share with the benchmarks (the bulk of the CPU);
- per LSH band (`band_pairs`): that band's keys of every shard, grouped into buckets; the
  pairs of rows sharing a bucket are the candidates (`minhash.candidate_pairs`, band by band);
- once (`components`): connected components over the verified pairs.
Pairs and components come out exactly as `minhash.candidate_pairs` and `minhash.components`
give them on the whole corpus, so the stage's output does not depend on the shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from curation import minhash
from machinery.shards import Plan, ShardOutput, Shards

SIGNATURES = "dedup.signatures"
BANDS = "dedup.bands"
COMPONENTS = "dedup.components"


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


def exact_keys(texts: list[str]) -> list[str]:
    """A short hash of each normalized text: equal keys mean exact duplicates."""
    return [hashlib.blake2b(t.encode(), digest_size=12).hexdigest() for t in minhash.normalize_many(texts)]


def _band(band: int) -> str:
    return f"band_{band}"


def ngram_hits(texts: list[str], bench_grams: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """Unique (n-gram hash, row) pairs, rows numbered from `offset`, of the n-grams also in `bench_grams`."""
    if not len(bench_grams) or not texts:
        return np.empty((0, 2), dtype=np.uint64)
    words, lengths = minhash.word_hashes(minhash.normalize_many(texts), {})
    hashes, counts = minhash.window_hashes(words, lengths, n, short=False, wide=True)
    owner = np.repeat(np.arange(offset, offset + len(texts), dtype=np.uint64), counts)
    at = np.minimum(np.searchsorted(bench_grams, hashes), len(bench_grams) - 1)
    hit = bench_grams[at] == hashes
    return np.unique(np.stack([hashes[hit], owner[hit]], axis=1), axis=0)


def features(item: tuple[int, list[str]], *, hashing: Hashing) -> ShardOutput:
    """One row shard: exact keys, signatures and band keys per row, and its benchmark n-gram hits."""
    start, texts = item
    sigs = minhash.signatures(texts, shingle=hashing.shingle, num_perm=hashing.num_perm, seed=hashing.seed)
    keys = minhash.band_keys(sigs, hashing.bands, hashing.rows)
    rows = pl.DataFrame({"key": pl.Series(exact_keys(texts), dtype=pl.String),
                         "sig": pl.Series(sigs, dtype=pl.Array(pl.UInt32, hashing.num_perm)),
                         **{_band(b): pl.Series(keys[:, b], dtype=pl.UInt64) for b in range(hashing.bands)}})
    hits = ngram_hits(texts, hashing.bench_grams, hashing.ngram, start)
    return ShardOutput(tables={"rows": rows, "hits": pl.DataFrame({"gram": hits[:, 0], "row": hits[:, 1]},
                                                                   schema={"gram": pl.UInt64, "row": pl.UInt64})},
                       counts={"rows": len(texts)})


def band_pairs(band: int, *, store: Shards, labels: list[str], keep: np.ndarray | None,
               extra: np.ndarray | None) -> np.ndarray:
    """Candidate pairs of one band: rows whose band keys are equal, over every shard.

    Rows are those `keep` selects (all when None), renumbered 0.. in order, then the rows of
    `extra` (bands x more rows' keys, e.g. the benchmarks'). Same pairs as the band's share of
    `minhash.candidate_pairs` over those rows.
    """
    column = _band(band)
    keys = np.concatenate([store.table(label, "rows", [column])[column].to_numpy() for label in labels])
    if keep is not None:
        keys = keys[keep]
    if extra is not None:
        keys = np.concatenate([keys, extra[:, band]])
    order = np.argsort(keys, kind="stable")
    return minhash.bucket_pairs(order, keys[order]).astype(np.int64)


def candidate_pairs(plan: Plan, labels: list[str], bands: int, *, keep: np.ndarray | None = None,
                    extra: np.ndarray | None = None) -> np.ndarray:
    """Unique pairs (i < j) sharing a band, one task per band; as `minhash.candidate_pairs` numbers them."""
    n = (int(keep.sum()) if keep is not None else _rows(plan.shards, labels)) + (len(extra) if extra is not None
                                                                                else 0)
    found = dict(plan.executor.map(band_pairs, range(bands), name=BANDS,
                                   shared={"store": plan.shards, "labels": labels, "keep": keep, "extra": extra}))
    encoded = [found[b][:, 0] * n + found[b][:, 1] for b in range(bands)]
    unique = np.unique(np.concatenate(encoded)) if encoded else np.empty(0, dtype=np.int64)
    return np.stack([unique // n, unique % n], axis=1) if n else np.empty((0, 2), dtype=np.int64)


def _rows(store: Shards, labels: list[str]) -> int:
    return sum(int(store.counts(label)["rows"]) for label in labels)


def _components(item: tuple[int, np.ndarray]) -> np.ndarray:
    n, pairs = item
    return minhash.components(n, pairs)


def components(plan: Plan, n: int, pairs: np.ndarray) -> np.ndarray:
    """`minhash.components` of the verified pairs, as one piece of the executor's work."""
    return next(plan.executor.map(_components, [(n, pairs)], name=COMPONENTS))[1]


def hash_rows(plan: Plan, texts: list[str], hashing: Hashing) -> list[str]:
    """Compute (or find finished) every row shard's features; the shard labels, in row order."""
    items = [(label, (start, texts[start:stop])) for label, (start, stop) in plan.rows("dedup", len(texts))]
    return plan.run(features, items, name=SIGNATURES, shared={"hashing": hashing})


def gathered(plan: Plan, labels: list[str], num_perm: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(exact keys, signatures, n-gram hits as (gram, row) pairs) of every row, from the finished shards."""
    rows = plan.concat(labels, "rows", ["key", "sig"])
    hits = plan.concat(labels, "hits")
    sigs = np.ascontiguousarray(rows["sig"].to_numpy()).reshape(-1, num_perm)
    return rows["key"].to_list(), sigs, np.stack([hits["gram"].to_numpy(), hits["row"].to_numpy()], axis=1)

