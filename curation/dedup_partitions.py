"""Phase (b) of the dedup stage: per partition of the shuffle keys, candidate pairs checked by Jaccard.

A task merges its partition's sorted record files of every row shard (each checked to be
sorted, as datatrove checks its signature files) with the benchmarks' band records, and
from each run of equal (band, key) finds:
- exact-key groups (the extra band `bands`): every run of two or more docs;
- benchmark matches: today's `minhash.bucket_pairs` rule over the run's docs and benchmark
  items (docs first), the pairs that cross, kept at estimated Jaccard >= threshold;
- near-duplicate edges: all pairs of a run of at most `minhash._MAX_GROUP_PAIRS` docs, kept at
  Jaccard >= threshold. A longer run is written out whole (`big`): which of its docs are still
  alive is known only in phase (c), and `bucket_pairs` links the members of such a run to its
  first *alive* member, so phase (c) applies the rule there. Pairs of a short run are a
  superset of what the rule gives on any subset of it, so the edges among alive docs are the same.
Signatures are read from the row shards' memory-mapped arrays, never shuffled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from curation import minhash
from curation.dedup_shards import RECORD, Signatures, part_path
from machinery.shards import ShardOutput

PARTITIONS = "dedup.partitions"
BIG_RUN = minhash._MAX_GROUP_PAIRS


class UnsortedRecordsError(ValueError):
    """A partition file whose records are not sorted: it was cut short or written by other code."""


def check_sorted(recs: np.ndarray, path: Path, label: str) -> None:
    """UnsortedRecordsError naming the file and the first record out of (band, key, doc) order."""
    if len(recs) < 2:
        return
    band, key, doc = recs["band"], recs["key"], recs["doc"]
    ok = (band[:-1] < band[1:]) | ((band[:-1] == band[1:]) & (
        (key[:-1] < key[1:]) | ((key[:-1] == key[1:]) & (doc[:-1] < doc[1:]))))
    if not ok.all():
        at = int(np.flatnonzero(~ok)[0]) + 1
        raise UnsortedRecordsError(f"{path}: records not sorted by (band, key, doc) at record {at}; delete it to "
                                   f"redo shard {label}")


def read_partition(folder: Path, partition: int, labels: list[str]) -> np.ndarray:
    """Every row shard's records of one partition, each checked sorted, merged in (band, key, doc) order."""
    parts = []
    for label in labels:
        path = part_path(folder, partition, label)
        recs = np.load(path, allow_pickle=False)
        if recs.dtype != RECORD:
            raise UnsortedRecordsError(f"{path}: records of dtype {recs.dtype}, not {RECORD}; delete it to redo "
                                       f"shard {label}")
        check_sorted(recs, path, label)
        parts.append(recs)
    return merge(parts)


def merge(parts: list[np.ndarray]) -> np.ndarray:
    """Sorted record arrays of consecutive doc ranges, in doc order, merged into one sorted array.

    Docs of a later part are all greater, so a stable sort by (band, key) keeps equal keys in doc order.
    """
    if not parts:
        return np.empty(0, dtype=RECORD)
    merged = np.concatenate(parts)
    return merged[np.lexsort((merged["key"], merged["band"]))]  # lexsort is stable


def run_ids(recs: np.ndarray) -> np.ndarray:
    """For sorted records, the number of the run of equal (band, key) each belongs to."""
    if len(recs) == 0:
        return np.empty(0, dtype=np.int64)
    new = np.concatenate(([True], (recs["band"][1:] != recs["band"][:-1]) | (recs["key"][1:] != recs["key"][:-1])))
    return np.cumsum(new) - 1


def run_sizes(runs: np.ndarray) -> np.ndarray:
    """For each record, the size of its run."""
    return np.bincount(runs)[runs] if len(runs) else np.empty(0, dtype=np.int64)


def rule_pairs(recs: np.ndarray) -> np.ndarray:
    """`minhash.bucket_pairs` over sorted records: the candidate pairs (i < j) of each run, unique."""
    if len(recs) < 2:
        return np.empty((0, 2), dtype=np.int64)
    pairs = minhash.bucket_pairs(recs["doc"].astype(np.int64), run_ids(recs))
    return unique_pairs(pairs)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct rows of an (n, 2) int64 array, sorted by (i, j)."""
    if len(pairs) == 0:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(pairs.astype(np.int64), axis=0)


def bench_matches(recs: np.ndarray, bench_from: int, sigs: Signatures, bench_sigs: np.ndarray, threshold: float
                  ) -> pl.DataFrame:
    """(doc, bench item, Jaccard) of the runs holding a benchmark item (numbered bench_from + item)."""
    runs = run_ids(recs)
    with_bench = np.zeros(runs[-1] + 1 if len(runs) else 0, dtype=bool)
    with_bench[runs[recs["doc"] >= bench_from]] = True
    pairs = rule_pairs(recs[with_bench[runs]] if len(runs) else recs)
    pairs = pairs[(pairs[:, 0] < bench_from) & (pairs[:, 1] >= bench_from)]
    scores = ((sigs.rows(pairs[:, 0]) == bench_sigs[pairs[:, 1] - bench_from]).mean(axis=1) if len(pairs)
              else np.empty(0))
    keep = scores >= threshold
    return pl.DataFrame({"doc": pairs[keep, 0], "bench": pairs[keep, 1] - bench_from, "jaccard": scores[keep]},
                        schema={"doc": pl.UInt64, "bench": pl.Int64, "jaccard": pl.Float64})


EARLIER_SCHEMA = {"doc": pl.UInt64, "old": pl.UInt64, "jaccard": pl.Float64, "exact": pl.Boolean}


def _mixed_runs(recs: np.ndarray, n_docs: int) -> np.ndarray:
    """Which records lie in a run holding both a current doc (< n_docs) and an earlier one."""
    runs = run_ids(recs)
    if not len(runs):
        return np.zeros(0, dtype=bool)
    old = np.bincount(runs, weights=recs["doc"] >= n_docs) > 0
    new = np.bincount(runs, weights=recs["doc"] < n_docs) > 0
    return (old & new)[runs]


def cross_pairs(recs: np.ndarray, n_docs: int, sigs: Signatures, threshold: float) -> pl.DataFrame:
    """`bucket_pairs` candidates of a current doc and an earlier doc (>= n_docs), at Jaccard >= threshold."""
    pairs = rule_pairs(recs)
    pairs = pairs[(pairs[:, 0] < n_docs) & (pairs[:, 1] >= n_docs)]
    scores = sigs.jaccard(pairs[:, 0], pairs[:, 1])
    keep = scores >= threshold
    return pl.DataFrame({"doc": pairs[keep, 0], "old": pairs[keep, 1], "jaccard": scores[keep],
                         "exact": False}, schema=EARLIER_SCHEMA)


def earlier_matches(exact: np.ndarray, banded: np.ndarray, n_docs: int, sigs: Signatures, threshold: float
                    ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(matches of current docs in earlier versions, the long mixed runs phase (c) cuts once it knows the leaks).

    Exact: a run of one exact key pairs its current docs with its first earlier doc (the
    index's first row with that key, as before). Near: short mixed runs give every cross pair.
    """
    exact = exact[_mixed_runs(exact, n_docs)]
    runs = run_ids(exact)
    first_old = np.full(runs[-1] + 1 if len(runs) else 0, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(first_old, runs[exact["doc"] >= n_docs], exact["doc"][exact["doc"] >= n_docs])
    current = exact["doc"] < n_docs
    same = pl.DataFrame({"doc": exact["doc"][current], "old": first_old[runs[current]],
                         "jaccard": np.ones(int(current.sum())), "exact": True}, schema=EARLIER_SCHEMA)
    banded = banded[_mixed_runs(banded, n_docs)]
    sizes = run_sizes(run_ids(banded))
    return pl.concat([same, cross_pairs(banded[sizes <= BIG_RUN], n_docs, sigs, threshold)]), \
        record_frame(banded[sizes > BIG_RUN])


def near_edges(recs: np.ndarray, sigs: Signatures, threshold: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(edges of short runs at Jaccard >= threshold, the records of long runs) among docs' band records."""
    sizes = run_sizes(run_ids(recs))
    big = recs[sizes > BIG_RUN]
    pairs = rule_pairs(recs[(sizes > 1) & (sizes <= BIG_RUN)])
    scores = sigs.jaccard(pairs[:, 0], pairs[:, 1])
    keep = scores >= threshold
    edges = pl.DataFrame({"i": pairs[keep, 0], "j": pairs[keep, 1], "jaccard": scores[keep]},
                         schema={"i": pl.UInt64, "j": pl.UInt64, "jaccard": pl.Float64})
    return edges, record_frame(big)


def record_frame(recs: np.ndarray) -> pl.DataFrame:
    """Records as a table (band, key, doc)."""
    return pl.DataFrame({"band": recs["band"], "key": recs["key"], "doc": recs["doc"]},
                        schema={"band": pl.UInt32, "key": pl.UInt64, "doc": pl.UInt64})


def exact_groups(recs: np.ndarray) -> pl.DataFrame:
    """(key, doc) of every exact-key run of two or more docs."""
    sizes = run_sizes(run_ids(recs))
    group = recs[sizes > 1]
    return pl.DataFrame({"key": group["key"], "doc": group["doc"]}, schema={"key": pl.UInt64, "doc": pl.UInt64})


def partition_task(partition: int, *, folder: Path, labels: list[str], starts: np.ndarray, n_docs: int,
                   bands: int, partitions: int, threshold: float, bench_records: np.ndarray, bench_sigs: np.ndarray
                   ) -> ShardOutput:
    """Phase (b) for one partition: exact groups, benchmark and earlier-version matches, near-duplicate edges.

    `labels`/`starts`: the row shards, then the earlier versions' shards (docs n_docs..);
    benchmark items are numbered after both (`starts[-1]` + item).
    """
    recs = read_partition(folder, partition, labels)
    mine = bench_records[(bench_records["key"] & np.uint64(partitions - 1)) == partition]
    sigs = Signatures(folder, labels, starts)
    exact, banded = recs[recs["band"] == bands], recs[recs["band"] < bands]
    current = banded[banded["doc"] < n_docs]
    edges, big = near_edges(current, sigs, threshold)
    earlier, big_old = earlier_matches(exact, banded, n_docs, sigs, threshold)
    return ShardOutput(tables={"exact": exact_groups(exact[exact["doc"] < n_docs]),
                               "bench": bench_matches(merge([current, mine]), int(starts[-1]), sigs, bench_sigs,
                                                      threshold),
                               "edges": edges, "big": big, "earlier": earlier, "big_old": big_old},
                       counts={"records": len(recs), "edges": edges.height, "big": big.height})
