"""Phases (c) and (d) of the dedup stage: verdicts over the duplicates only, then each shard's outputs.

(c) one task, over what phase (b) found, never over every doc: the contaminated docs (n-gram
    hits that are not boilerplate, same text or MinHash match with a benchmark item), the docs
    in an earlier version, then, among docs still alive, exact-key groups (first alive doc
    kept) and near-duplicate components (union-find over the edges between alive docs, first
    doc kept). It writes, per row shard, the exact and near verdicts with the id they point at,
    and the benchmark matches; memory grows with the duplicates, not with the documents.
(d) per row shard: its rows read again, joined with its verdicts; kept and rejected tables.
The order of the rules is `dedup.dedup`'s: contaminated > in_earlier_version > exact > near.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from curation import minhash
from curation.dedup_partitions import (
    cross_pairs,
    rule_pairs,
    run_ids,
    run_sizes,
    unique_pairs,
)
from curation.dedup_shards import RECORD, Signatures, sig_path
from machinery import store
from machinery.shards import ShardOutput, Shards

COMPONENTS = "dedup.components"
OUTPUTS = "dedup.outputs"
EARLIER = "dedup.earlier"
EXACT, NEAR = "exact_duplicate", "near_duplicate"


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Where the earlier phases' results lie: row shards, partitions, and the finished-shard store."""

    source: Path
    folder: Path
    shards: Shards
    labels: list[str]  # row shards, in row order
    starts: np.ndarray  # shard s holds docs starts[s] .. starts[s+1]-1
    partitions: list[str]  # phase (b) labels
    asked: list[str]  # per row shard, the label of its `earlier` table from an index asked row by row
    old_labels: list[str] = field(default_factory=list)  # the earlier versions' shards (LocalIndex), in doc order
    old_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # their docs, from n_docs
    old_versions: list[str] = field(default_factory=list)  # the version of each of old_labels

    def signatures(self) -> Signatures:
        """Signatures of current and earlier docs."""
        return Signatures(self.folder, self.labels + self.old_labels,
                          np.concatenate([self.starts[:-1], self.old_starts]))


def _docs(frames: list[pl.DataFrame], column: str) -> np.ndarray:
    """Sorted unique values of one column over several tables."""
    values = [f[column].to_numpy().astype(np.int64) for f in frames if f.height]
    return np.unique(np.concatenate(values)) if values else np.empty(0, dtype=np.int64)


def boilerplate(layout: Layout, max_df: int) -> np.ndarray:
    """Benchmark n-grams found in more than `max_df` docs (`contamination`'s rule), over every shard."""
    counts = [layout.shards.table(label, "hits", ["gram"])["gram"].value_counts(name="df") for label in layout.labels]
    df = pl.concat(counts).group_by("gram").agg(pl.col("df").sum()) if counts else pl.DataFrame()
    return np.sort(df.filter(pl.col("df") > max_df)["gram"].to_numpy()) if df.height else np.empty(0, np.uint64)


def contaminated(layout: Layout, grams: np.ndarray) -> np.ndarray:
    """Docs that leak a benchmark item: a non-boilerplate n-gram, the same text, or a MinHash match."""
    found = []
    for label in layout.labels:
        hits = layout.shards.table(label, "hits")
        found.append(hits.filter(~pl.col("gram").is_in(pl.Series(grams, dtype=pl.UInt64).implode())))
        keys = layout.shards.table(label, "keys", ["bench"]).with_row_index("offset")
        start = int(layout.starts[layout.labels.index(label)])
        found.append(keys.filter(pl.col("bench") >= 0).select((pl.col("offset") + start).alias("row")))
    found += [layout.shards.table(p, "bench", ["doc"]).rename({"doc": "row"}) for p in layout.partitions]
    return _docs(found, "row")


def _best_earlier(found: pl.DataFrame) -> pl.DataFrame:
    """Per doc, its match in an earlier version: an exact one (first), else the most similar (first of equals)."""
    return found.sort("doc", "exact", "jaccard", "old", descending=[False, True, True, False]).unique(
        "doc", keep="first", maintain_order=True)


def earlier_verdicts(layout: Layout, sigs: Signatures, leaks: np.ndarray, threshold: float) -> pl.DataFrame:
    """(doc, dup_of, jaccard, version) of every doc, not contaminated, that an earlier version holds."""
    gone = pl.Series(leaks, dtype=pl.UInt64).implode()
    if layout.asked:  # an index asked shard by shard (Redis) gave its verdicts already
        asked = pl.concat([layout.shards.table(label, "earlier") for label in layout.asked])
        return asked.filter(~pl.col("doc").is_in(gone)).sort("doc")
    if not layout.old_labels:
        return pl.DataFrame(schema={"doc": pl.UInt64, "dup_of": pl.String, "jaccard": pl.Float64,
                                    "version": pl.String})
    n_docs = int(layout.starts[-1])
    found = [layout.shards.table(p, "earlier").filter(~pl.col("doc").is_in(gone)) for p in layout.partitions]
    big = _records(pl.concat([layout.shards.table(p, "big_old") for p in layout.partitions])
                   .filter(~pl.col("doc").is_in(gone)))
    found.append(cross_pairs(big[run_sizes(run_ids(big)) > 1], n_docs, sigs, threshold))
    best = _best_earlier(pl.concat(found))
    olds = best["old"].to_numpy().astype(np.int64)
    shard = np.searchsorted(layout.old_starts, olds, side="right") - 1
    names: dict[int, str] = {}
    for s in np.unique(shard):
        ids = layout.shards.table(layout.old_labels[s], "ids")["id"].to_list()
        names.update((int(o), ids[int(o) - int(layout.old_starts[s])]) for o in olds[shard == s])
    return best.select("doc", pl.Series("dup_of", [names[int(o)] for o in olds], dtype=pl.String), "jaccard",
                       pl.Series("version", [layout.old_versions[s] for s in shard], dtype=pl.String))


def _records(frame: pl.DataFrame) -> np.ndarray:
    """A (band, key, doc) table as records."""
    recs = np.empty(frame.height, dtype=RECORD)
    for column in RECORD.names:
        recs[column] = frame[column].to_numpy()
    return recs


def exact_verdicts(layout: Layout, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact duplicates, the first alive doc with their key), among docs not in `dead`."""
    groups = pl.concat([layout.shards.table(p, "exact") for p in layout.partitions]).sort("key", "doc")
    groups = groups.filter(~pl.col("doc").is_in(pl.Series(dead, dtype=pl.UInt64).implode()))
    groups = groups.with_columns(rep=pl.col("doc").first().over("key")).filter(pl.col("doc") != pl.col("rep"))
    return groups["doc"].to_numpy().astype(np.int64), groups["rep"].to_numpy().astype(np.int64)


def near_pairs(layout: Layout, sigs: Signatures, dead: np.ndarray, threshold: float) -> np.ndarray:
    """Verified pairs (i < j) of alive docs: phase (b)'s edges, and long runs cut by the bucket rule."""
    edges = pl.concat([layout.shards.table(p, "edges", ["i", "j"]) for p in layout.partitions])
    gone = pl.Series(dead, dtype=pl.UInt64).implode()
    edges = edges.filter(~pl.col("i").is_in(gone) & ~pl.col("j").is_in(gone))
    pairs = np.stack([edges["i"].to_numpy(), edges["j"].to_numpy()], axis=1).astype(np.int64)
    recs = _records(pl.concat([layout.shards.table(p, "big") for p in layout.partitions])
                    .filter(~pl.col("doc").is_in(gone)))
    # Runs of different partitions never share a key, and each is sorted: the concatenation is in run order.
    recs = recs[run_sizes(run_ids(recs)) > 1]
    candidates = rule_pairs(recs)
    scores = sigs.jaccard(candidates[:, 0], candidates[:, 1])
    return unique_pairs(np.concatenate([pairs, candidates[scores >= threshold]]))


def ids_of(layout: Layout, docs: np.ndarray) -> dict[int, str]:
    """The id of each doc, read from the pull output shard by shard (only shards holding one)."""
    found: dict[int, str] = {}
    shard = np.searchsorted(layout.starts, docs, side="right") - 1
    for s in np.unique(shard):
        start, stop = int(layout.starts[s]), int(layout.starts[s + 1])
        ids = store.read_rows(layout.source, start, stop, ["id"])["id"].to_list()
        found.update((int(d), ids[int(d) - start]) for d in docs[shard == s])
    return found


def resolve(_: None, *, layout: Layout, threshold: float, max_df: int) -> ShardOutput:
    """Phase (c): per row shard, its earlier-version, exact and near verdicts and its benchmark matches.

    Tables `<label>.earlier`, `<label>.dups` and `<label>.bench` per row shard, and the
    boilerplate n-grams; what it holds grows with the duplicates found, not with the rows.
    """
    grams = boilerplate(layout, max_df)
    leaks = contaminated(layout, grams)
    sigs = layout.signatures()
    earlier = earlier_verdicts(layout, sigs, leaks, threshold)
    dead = np.union1d(leaks, earlier["doc"].to_numpy().astype(np.int64))
    exact, exact_rep = exact_verdicts(layout, dead)
    dead = np.union1d(dead, exact)
    pairs = near_pairs(layout, sigs, dead, threshold)
    nodes = np.unique(pairs) if len(pairs) else np.empty(0, dtype=np.int64)
    reps = nodes[minhash.components(len(nodes), np.searchsorted(nodes, pairs))] if len(nodes) else nodes
    near, near_rep = nodes[reps != nodes], reps[reps != nodes]
    names = ids_of(layout, np.union1d(exact_rep, near_rep))
    verdicts = pl.DataFrame({
        "doc": np.concatenate([exact, near]), "reason": [EXACT] * len(exact) + [NEAR] * len(near),
        "dup_of": [names[int(r)] for r in np.concatenate([exact_rep, near_rep])],
        "jaccard": np.concatenate([np.ones(len(exact)), sigs.jaccard(near, near_rep)])},
        schema={"doc": pl.UInt64, "reason": pl.String, "dup_of": pl.String, "jaccard": pl.Float64}).sort("doc")
    bench = pl.concat([layout.shards.table(p, "bench") for p in layout.partitions]).sort("doc", "bench")
    tables = {"boilerplate": pl.DataFrame({"gram": grams}, schema={"gram": pl.UInt64})}
    for s, label in enumerate(layout.labels):
        lo, hi = int(layout.starts[s]), int(layout.starts[s + 1])
        tables[f"{label}.dups"] = verdicts.filter(pl.col("doc").is_between(lo, hi, closed="left"))
        tables[f"{label}.bench"] = bench.filter(pl.col("doc").is_between(lo, hi, closed="left"))
        tables[f"{label}.earlier"] = earlier.filter(pl.col("doc").is_between(lo, hi, closed="left"))
    return ShardOutput(tables=tables, counts={"near": len(near), "exact": len(exact)})


def signatures_of(folder: Path, label: str) -> np.ndarray:
    """A row shard's signatures, memory-mapped."""
    return np.load(sig_path(folder, label), mmap_mode="r")
