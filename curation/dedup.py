"""The dedup stage: decontamination, earlier versions, exact and MinHash near-duplicates.

Order: a problem that leaks an eval-set item is `contaminated` whatever else it is (eval sets:
Hub benchmarks and procedural held-out sets, the run's own `eval.sets` among them, so that
held-out problems are held out by text, not only by id); then a problem already in an
earlier version of the dataset is `in_earlier_version`; then exact
copies (normalized text) and near-duplicates (MinHash LSH, transitive clusters) keep their
first row. Each rejected row names the row it duplicates (`dup_of`) and the estimated Jaccard.

The stage runs in phases, each a function of files to files that either engine runs as tasks,
so that no process holds the whole corpus: (a) per row shard, signatures and sorted partition
records (`dedup_shards`; earlier versions likewise, `dedup_earlier`); (b) per partition,
candidate pairs checked by Jaccard (`dedup_partitions`); (c) once, verdicts over the
duplicates only (`dedup_verdicts`); (d) per row shard, its kept and rejected rows (`shard_outputs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from curation import (
    dedup_earlier,
    dedup_partitions,
    dedup_shards,
    dedup_verdicts,
    minhash,
    sources,
)
from curation.dedup_index import LocalIndex, VersionIndex, open_index
from curation.dedup_shards import exact_keys
from curation.sources import procedural
from machinery import shards, store
from machinery.config import DedupConfig, HubSource, ProceduralSource
from machinery.execution import Executor, LocalExecutor

logger = logging.getLogger(__name__)

STAGE = "dedup"
INPUT_STAGE = "pull"
# Why a row was judged contaminated: the benchmark, its row id there, and the shared word n-gram
# (empty for a MinHash match, whose estimated similarity is in `jaccard`).
EVIDENCE_COLUMNS = ("benchmark", "benchmark_id", "matched_ngram")
BENCH_SCHEMA = {"source": pl.String, "source_id": pl.String, "problem": pl.String, "ngrams": pl.Boolean}
EXAMPLES_PER_BENCHMARK = 3
EXAMPLE_CHARS = 400


class DedupReason(StrEnum):
    """Reject reasons of this stage (values of `reject_reason`)."""

    CONTAMINATED = "contaminated"
    IN_EARLIER_VERSION = "in_earlier_version"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True, kw_only=True)
class Params:
    """Resolved MinHash/LSH parameters; (bands, rows) are chosen and recorded explicitly."""

    threshold: float
    num_perm: int
    shingle: int
    bands: int
    rows: int
    seed: int = 1

    @classmethod
    def from_config(cls, config: DedupConfig) -> Params:
        """Fill (bands, rows) from the threshold when the config leaves them out."""
        bands, rows = config.bands, config.rows
        if bands is None or rows is None:
            bands, rows = minhash.choose_bands(config.threshold, config.num_perm)
        return cls(threshold=config.threshold, num_perm=config.num_perm, shingle=config.shingle,
                   bands=bands, rows=rows)


@dataclass(kw_only=True)
class DedupStats(store.StageStats):
    """Dedup figures for the data card."""

    bands: int = 0
    rows_per_band: int = 0
    threshold: float = 0.0
    clusters: int = 0
    eval_items: dict[str, int] = field(default_factory=dict)
    contaminated_by: dict[str, int] = field(default_factory=dict)
    hits: list[dict[str, str]] = field(default_factory=list)
    # per benchmark, up to 3 contaminated problems side by side with the benchmark item they match
    contamination_examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    earlier_versions: list[str] = field(default_factory=list)


def cluster_ids(texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5) -> list[int]:
    """For each text, the index of its cluster's representative (the cluster's first text)."""
    sigs = minhash.signatures(texts, shingle=shingle, num_perm=num_perm)
    bands, rows = minhash.choose_bands(threshold, num_perm)
    return _clusters(sigs, bands, rows, threshold).tolist()


def trace_clusters(problem_ids: list[str], texts: list[str], *, threshold: float = 0.8, num_perm: int = 128,
                   shingle: int = 5) -> list[int]:
    """Like `cluster_ids`, but only traces of the same problem can share a cluster."""
    sigs = minhash.signatures(texts, shingle=shingle, num_perm=num_perm)
    return trace_clusters_of(problem_ids, sigs, threshold=threshold)


def trace_clusters_of(problem_ids: list[str], sigs: np.ndarray, *, threshold: float = 0.8) -> list[int]:
    """`trace_clusters` from the traces' signatures (computed where the traces were checked)."""
    bands, rows = minhash.choose_bands(threshold, sigs.shape[1])
    pairs = minhash.candidate_pairs(sigs, bands, rows)
    groups = np.asarray(pl.Series(problem_ids).rank("dense").to_numpy())
    pairs = pairs[groups[pairs[:, 0]] == groups[pairs[:, 1]]]
    pairs = pairs[minhash.jaccard(sigs, pairs) >= threshold]
    return minhash.components(len(sigs), pairs).tolist()


def _clusters(sigs: np.ndarray, bands: int, rows: int, threshold: float) -> np.ndarray:
    """Representative index per row: LSH candidates kept at estimated Jaccard >= threshold."""
    pairs = minhash.candidate_pairs(sigs, bands, rows)
    pairs = pairs[minhash.jaccard(sigs, pairs) >= threshold]
    return minhash.components(len(sigs), pairs)


def _ngram_index(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted 64-bit hashes of every word n-gram of texts, and the text each came from."""
    words, lengths = minhash.word_hashes(minhash.normalize_many(texts), {})
    hashes, counts = minhash.window_hashes(words, lengths, n, short=False, wide=True)
    owner = np.repeat(np.arange(len(texts)), counts)
    order = np.argsort(hashes, kind="stable")
    return hashes[order], owner[order]


def contamination(train: list[str], bench: list[str], *, n: int = 13, max_df: int = 10
                  ) -> dict[int, tuple[int, str]]:
    """Training texts sharing a word n-gram with a benchmark text: {train idx: (bench idx, n-gram)}.

    N-grams found in more than `max_df` training texts are boilerplate ("how much money does
    she have left") and are dropped from the benchmark index rather than counted as leaks.
    """
    bench_h, bench_owner = _ngram_index(bench, n)
    hits = dedup_shards.ngram_hits(train, np.unique(bench_h), n)
    return leaks_from_hits(hits, bench_h, bench_owner, train, n=n, max_df=max_df)


def leaks_from_hits(hits: np.ndarray, bench_h: np.ndarray, bench_owner: np.ndarray, train: list[str], *, n: int,
                    max_df: int) -> dict[int, tuple[int, str]]:
    """`contamination` from the (n-gram, training row) pairs that hit the benchmark index."""
    if len(hits) == 0:
        return {}
    grams, df = np.unique(np.unique(hits, axis=0)[:, 0], return_counts=True)
    return ngram_leaks(hits, grams[df > max_df], bench_h, bench_owner, train, n=n)


def ngram_leaks(hits: np.ndarray, boilerplate: np.ndarray, bench_h: np.ndarray, bench_owner: np.ndarray,
                texts: list[str], *, n: int, offset: int = 0) -> dict[int, tuple[int, str]]:
    """{row: (benchmark item, n-gram text)} of rows (texts[row - offset]) with a non-boilerplate hit.

    A row's evidence is its smallest n-gram hash and the first benchmark text holding it:
    the same whatever the shards.
    """
    hits = hits[~np.isin(hits[:, 0], boilerplate)] if len(hits) else hits
    if len(hits) == 0:
        return {}
    order = np.lexsort((hits[:, 0], hits[:, 1]))  # by row, then n-gram hash
    rows, grams = hits[order, 1], hits[order, 0]
    first = np.concatenate(([True], rows[1:] != rows[:-1]))
    found: dict[int, tuple[int, str]] = {}
    for row, gram in zip(rows[first].tolist(), grams[first]):
        bench_idx = int(bench_owner[np.searchsorted(bench_h, gram)])
        found[row] = (bench_idx, _find_gram(minhash.normalize(texts[row - offset]).split(" "), gram, n))
    return found


def _find_gram(words: list[str], gram: np.uint64, n: int) -> str:
    """The text of the n-gram with this hash in a word list (for the report)."""
    hashes, lengths = minhash.word_hashes([" ".join(words)], {})
    windows, _ = minhash.window_hashes(hashes, lengths, n, short=False, wide=True)
    position = int(np.flatnonzero(windows == gram)[0])
    return " ".join(words[position : position + n])


def eval_set_name(source: HubSource | ProceduralSource) -> str:
    """How an eval set is named in the evidence and the stats: the Hub id, or the generator and its seed."""
    if isinstance(source, ProceduralSource):
        return f"{procedural.source_name(source.task)} (seed {source.seed})"
    return source.id


def load_eval_sets(eval_sets: list[HubSource | ProceduralSource]) -> pl.DataFrame:
    """Problems of the eval sets (source, source_id, problem, ngrams) to decontaminate against.

    `ngrams` says whether a shared word n-gram counts as a leak: for Hub benchmarks, written by
    people, it does; a procedural set shares its generator's templates with the training
    problems of that generator, so only the same or a near-same text counts there.
    """
    frames = []
    for source in eval_sets:
        if isinstance(source, ProceduralSource) and source.seed is None:
            raise ValueError(f"dedup.eval_sets: procedural set {source.task!r} needs a seed (Config.dedup_stage "
                             f"gives the run's to the run's own eval.sets)")
        kept = sources.load(source, seed=0)[0]
        frames.append(kept.select(pl.lit(eval_set_name(source)).alias("source"), "source_id", "problem",
                                  pl.lit(isinstance(source, HubSource)).alias("ngrams")))
    if not frames:
        return pl.DataFrame(schema=BENCH_SCHEMA)
    return pl.concat(frames)


class Leak(NamedTuple):
    """A training problem's match in a benchmark: which item, how, estimated Jaccard, the shared n-gram."""

    bench: int
    how: str
    jaccard: float
    gram: str | None


@dataclass(frozen=True, kw_only=True)
class DedupOutput:
    """The stage result, plus what the version index stores of the kept rows."""

    result: store.StageResult
    keys: list[str]
    signatures: np.ndarray


@dataclass(frozen=True, kw_only=True)
class Bench:
    """The eval sets as every task needs them: a few thousand items, sent to the tasks once."""

    names: list[str]  # "source:source_id", what a contaminated row's dup_of says
    sources: list[str]
    source_ids: list[str]
    texts: list[str]
    sigs: np.ndarray
    grams: np.ndarray  # sorted word n-gram hashes of the items whose n-grams count
    owner: np.ndarray  # the item each of `grams` came from
    first: dict[str, int]  # exact key -> first item with that normalized text


def bench_tables(bench: pl.DataFrame, params: Params, ngram: int) -> Bench:
    """Signatures, n-gram index and exact keys of the eval sets."""
    texts = bench["problem"].to_list()
    by_ngram = (np.flatnonzero(bench["ngrams"].to_numpy()) if "ngrams" in bench.columns
                else np.arange(bench.height))  # a bench without the column: benchmarks, as before
    grams, owner = _ngram_index([texts[i] for i in by_ngram], ngram)
    first: dict[str, int] = {}
    for b, key in enumerate(exact_keys(texts)):
        first.setdefault(key, b)
    return Bench(names=[f"{s}:{i}" for s, i in bench.select("source", "source_id").iter_rows()],
                 sources=bench["source"].to_list(), source_ids=bench["source_id"].to_list(), texts=texts,
                 sigs=minhash.signatures(texts, shingle=params.shingle, num_perm=params.num_perm, seed=params.seed),
                 grams=grams, owner=by_ngram[owner] if len(owner) else owner, first=first)


def _earlier_matches(item: tuple[str, int], *, folder: Path, kept: shards.Shards, index: VersionIndex,
                     params: Params) -> shards.ShardOutput:
    """One row shard's rows that an earlier version holds: (doc, id there, Jaccard, version)."""
    label, start = item
    keys = kept.table(label, "keys", ["key"])["key"].to_list()
    matches = index.match(keys, np.asarray(dedup_verdicts.signatures_of(folder, label)), params)
    found = [(start + r, *m) for r, m in enumerate(matches) if m is not None]
    return shards.ShardOutput(tables={"earlier": pl.DataFrame(
        found, orient="row", schema={"doc": pl.UInt64, "dup_of": pl.String, "jaccard": pl.Float64,
                                     "version": pl.String})})


def _leaks(label: str, start: int, texts: list[str], sigs: np.ndarray, *, layout: dedup_verdicts.Layout,
           resolved: str, bench: Bench, ngram: int) -> dict[int, Leak]:
    """A shard's contaminated rows (offsets in the shard): n-gram leak, else same text, else MinHash match."""
    table = layout.shards.table(label, "hits")
    hits = np.stack([table["gram"].to_numpy(), table["row"].to_numpy()], axis=1).astype(np.uint64)
    boiler = layout.shards.table(resolved, "boilerplate")["gram"].to_numpy()
    leaks = {row - start: Leak(b, f"shares the {ngram}-gram '{gram}'",
                               float((sigs[row - start] == bench.sigs[b]).mean()), gram)
             for row, (b, gram) in ngram_leaks(hits, boiler, bench.grams, bench.owner, texts, n=ngram,
                                               offset=start).items()}
    for r, b in enumerate(layout.shards.table(label, "keys", ["bench"])["bench"].to_list()):
        if b >= 0:
            leaks.setdefault(r, Leak(b, "same text after normalization", 1.0, None))
    matches = layout.shards.table(resolved, f"{label}.bench").unique("doc", keep="first", maintain_order=True)
    for doc, b, j in matches.iter_rows():
        leaks.setdefault(doc - start, Leak(b, f"MinHash near-duplicate (Jaccard {j:.2f})", j, None))
    return leaks


def _contamination_counts(leaks: dict[int, Leak], ids: list[str], texts: list[str], bench: Bench) -> dict:
    """What the stats say of a shard's contaminated rows: per eval set, every hit, the first examples."""
    by: dict[str, int] = {}
    hits, examples = [], {}
    for r in sorted(leaks):
        leak, source = leaks[r], bench.sources[leaks[r].bench]
        by[source] = by.get(source, 0) + 1
        hits.append({"id": ids[r], "benchmark_item": bench.names[leak.bench], "how": leak.how})
        shown = examples.setdefault(source, [])
        if len(shown) < EXAMPLES_PER_BENCHMARK:
            shown.append({"id": ids[r], "problem": texts[r][:EXAMPLE_CHARS],
                          "benchmark_id": bench.source_ids[leak.bench],
                          "benchmark_problem": bench.texts[leak.bench][:EXAMPLE_CHARS],
                          "evidence": leak.how, "jaccard": f"{leak.jaccard:.2f}"})
    return {"contaminated_by": by, "hits": hits, "examples": examples}


def shard_outputs(item: tuple[str, int, int], *, layout: dedup_verdicts.Layout, resolved: str, bench: Bench,
                  ngram: int) -> shards.ShardOutput:
    """Phase (d): one row shard's kept and rejected rows, in row order, from its verdicts."""
    label, start, stop = item
    rows = store.read_rows(layout.source, start, stop)
    texts, ids = rows["problem"].to_list(), rows["id"].to_list()
    leaks = _leaks(label, start, texts, dedup_verdicts.signatures_of(layout.folder, label), layout=layout,
                   resolved=resolved, bench=bench, ngram=ngram)
    n = len(texts)
    columns: dict[str, list] = {c: [None] * n for c in ("reject_reason", "reject_detail", "dup_of", "jaccard",
                                                        *EVIDENCE_COLUMNS)}

    def mark(r: int, reason: DedupReason, detail: str, dup_of: str, jaccard: float, **evidence: str | None) -> None:
        if columns["reject_reason"][r] is None:  # the first rule that applies wins
            for name, value in (("reject_reason", str(reason)), ("reject_detail", detail), ("dup_of", dup_of),
                                ("jaccard", jaccard), *evidence.items()):
                columns[name][r] = value

    for r, leak in leaks.items():
        mark(r, DedupReason.CONTAMINATED, leak.how, bench.names[leak.bench], leak.jaccard,
             benchmark=bench.sources[leak.bench], benchmark_id=bench.source_ids[leak.bench], matched_ngram=leak.gram)
    for doc, dup_of, j, version in layout.shards.table(resolved, f"{label}.earlier").iter_rows():
        mark(doc - start, DedupReason.IN_EARLIER_VERSION, f"already in version {version}", dup_of, j)
    for doc, reason, dup_of, j in layout.shards.table(resolved, f"{label}.dups").iter_rows():
        detail = "same text after normalization" if reason == DedupReason.EXACT_DUPLICATE else \
            f"MinHash cluster of {dup_of}"
        mark(doc - start, DedupReason(reason), detail, dup_of, j)
    flags = [r is not None for r in columns["reject_reason"]]
    rejected_at = pl.Series(flags, dtype=pl.Boolean)
    kept = rows.filter(~rejected_at)
    picked = [r for r in range(n) if flags[r]]
    rejected = rows.filter(rejected_at).with_columns(
        **{name: pl.Series(name, [columns[name][r] for r in picked],
                           dtype=pl.Float64 if name == "jaccard" else pl.String) for name in columns})
    reasons = rejected["reject_reason"].value_counts().iter_rows() if rejected.height else []
    return shards.ShardOutput(
        tables={"kept": kept, "rejected": rejected,
                "kept_at": pl.DataFrame({"offset": [r for r in range(n) if not flags[r]]},
                                        schema={"offset": pl.UInt32})},
        counts={"kept": kept.height, "rejected": rejected.height, "reasons": dict(reasons),
                **_contamination_counts(leaks, ids, texts, bench)})


def _stats(plan: shards.Plan, labels: list[str], n: int, bench: pl.DataFrame, params: Params,
           earlier: VersionIndex) -> DedupStats:
    """The stage's stats from the shards' counts: sums, and the first examples in row order."""
    stats = DedupStats(rows_in=n, kept=0, rejected=0, bands=params.bands, rows_per_band=params.rows,
                       threshold=params.threshold, earlier_versions=earlier.versions())
    for source, count in bench.group_by("source", maintain_order=True).len().iter_rows():
        stats.eval_items[source] = count
    for label in labels:
        counts = plan.shards.counts(label)
        stats.kept += counts["kept"]
        stats.rejected += counts["rejected"]
        for into, got in ((stats.reasons, counts["reasons"]), (stats.contaminated_by, counts["contaminated_by"])):
            for key, value in got.items():
                into[key] = into.get(key, 0) + value
        stats.hits += counts["hits"]
        for source, shown in counts["examples"].items():
            have = stats.contamination_examples.setdefault(source, [])
            have += shown[: EXAMPLES_PER_BENCHMARK - len(have)]
    stats.reasons = dict(sorted(stats.reasons.items()))
    stats.clusters = stats.kept  # every cluster of the rows left after the exact step keeps one row
    return stats


def _hash_earlier(plan: shards.Plan, entries: list[tuple[str, Path]], n: int, hashing: dedup_shards.Hashing
                  ) -> tuple[list[str], np.ndarray, list[str]]:
    """The earlier versions' rows as docs n.. in the phases' layout: (shard labels, doc bounds, version per shard)."""
    items, bounds, versions = [], [n], []
    for version, path in entries:
        for lo, hi in shards.row_ranges(store.row_count(path), plan.shard_rows):
            if hi > lo:
                label = f"earlier-{len(items):05d}-{shards.rows_label(version, lo, hi)}"
                items.append((label, (label, path, lo, hi, bounds[-1])))
                bounds.append(bounds[-1] + hi - lo)
                versions.append(version)
    labels = plan.run(dedup_earlier.hash_earlier, items, name=dedup_earlier.EARLIER_ROWS,
                      shared={"folder": plan.folder, "hashing": hashing})
    return labels, np.asarray(bounds, dtype=np.int64), versions


@dataclass(frozen=True, kw_only=True)
class Phases:
    """What the phases left: the stage result, and the row shards' labels (phases a and d)."""

    result: store.StageResult
    hashed: list[str]
    outputs: list[str]


def run_phases(source: Path, n: int, bench: pl.DataFrame, params: Params, earlier: VersionIndex, *,
               ngram: int = 13, max_df: int = 10, plan: shards.Plan) -> Phases:
    """The dedup stage on the `n` rows of the parquet file `source`, in phases (a)-(d) run by `plan`.

    The driver sends shard descriptions and reads back labels and counts: no text, key or
    signature of the corpus passes through it.
    """
    started = time.time()
    folder = plan.folder
    tables = bench_tables(bench, params, ngram)
    entries = earlier.entries() if isinstance(earlier, LocalIndex) else None
    old_rows = sum(store.row_count(path) for _, path in entries or [])
    partitions = dedup_shards.partition_count(n + old_rows, params.bands)
    hashing = dedup_shards.Hashing(shingle=params.shingle, num_perm=params.num_perm, seed=params.seed,
                                   bands=params.bands, rows=params.rows, ngram=ngram,
                                   bench_grams=np.unique(tables.grams), bench_first=tables.first,
                                   partitions=partitions)
    cut = plan.rows("dedup", n)
    labels = plan.run(dedup_shards.hash_shard, [(label, (label, lo, hi)) for label, (lo, hi) in cut],
                      name=dedup_shards.SIGNATURES, shared={"source": source, "folder": folder, "hashing": hashing})
    starts = np.asarray([lo for _, (lo, _) in cut] + [n], dtype=np.int64)
    old = _hash_earlier(plan, entries, n, hashing) if entries is not None else None
    asked = []
    if old is None and earlier.versions():  # asked here, shard by shard (a Redis connection stays in this process)
        asked = shards.run(LocalExecutor(), plan.shards, _earlier_matches,
                           [(f"{label}-earlier", (label, lo)) for label, (lo, _) in cut], name=dedup_verdicts.EARLIER,
                           shared={"folder": folder, "kept": plan.shards, "index": earlier, "params": params},
                           report=plan.report)
    old_labels, old_starts, old_versions = old or ([], np.asarray([n], dtype=np.int64), [])
    bench_records = dedup_shards.records(minhash.band_keys(tables.sigs, params.bands, params.rows),
                                         np.zeros(len(tables.texts), dtype=np.uint64), int(old_starts[-1]))
    parts = plan.run(dedup_partitions.partition_task,
                     [(f"dedup-part-{p:05d}-of-{partitions:05d}", p) for p in range(partitions)],
                     name=dedup_partitions.PARTITIONS,
                     shared={"folder": folder, "labels": labels + old_labels,
                             "starts": np.concatenate([starts[:-1], old_starts]), "n_docs": n, "bands": params.bands,
                             "partitions": partitions, "threshold": params.threshold,
                             "bench_records": bench_records[bench_records["band"] < params.bands],
                             "bench_sigs": tables.sigs})
    layout = dedup_verdicts.Layout(source=source, folder=folder, shards=plan.shards, labels=labels, starts=starts,
                                   partitions=parts, asked=asked, old_labels=old_labels, old_starts=old_starts,
                                   old_versions=old_versions)
    resolved = plan.run(dedup_verdicts.resolve, [(f"dedup-verdicts-{plan.shard_rows}", None)],
                        name=dedup_verdicts.COMPONENTS,
                        shared={"layout": layout, "threshold": params.threshold, "max_df": max_df})[0]
    outputs = plan.run(shard_outputs,
                       [(shards.rows_label("dedup-out", lo, hi), (label, lo, hi)) for label, (lo, hi) in cut],
                       name=dedup_verdicts.OUTPUTS,
                       shared={"layout": layout, "resolved": resolved, "bench": tables, "ngram": ngram})
    stats = _stats(plan, outputs, n, bench, params, earlier)
    stats.seconds = round(time.time() - started, 3)
    result = store.StageResult(kept=store.Parts(files=tuple(plan.path(o, "kept") for o in outputs), height=stats.kept),
                               rejected=store.Parts(files=tuple(plan.path(o, "rejected") for o in outputs),
                                                    height=stats.rejected),
                               stats=stats)
    return Phases(result=result, hashed=labels, outputs=outputs)


def kept_entries(plan: shards.Plan, phases: Phases) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(ids, exact keys, signatures) of the kept rows, shard by shard: what the version index records."""
    for hashed, output in zip(phases.hashed, phases.outputs):
        at = plan.shards.table(output, "kept_at")["offset"].to_numpy().astype(np.int64)
        keys = plan.shards.table(hashed, "keys", ["key"])["key"].to_list()
        sigs = dedup_verdicts.signatures_of(plan.folder, hashed)
        yield (plan.shards.table(output, "kept", ["id"])["id"].to_list(), [keys[i] for i in at],
               np.ascontiguousarray(sigs[at]))


def dedup(problems: pl.DataFrame, bench: pl.DataFrame, params: Params, earlier: VersionIndex,
          *, ngram: int = 13, max_df: int = 10, plan: shards.Plan | None = None) -> DedupOutput:
    """Split problems into kept and rejected (contaminated, in earlier versions, duplicates).

    The stage's phases on a frame: it is written to the plan's shard folder (a scratch one
    unless `plan` keeps its shards in a folder) and read back. The result is the same wherever it runs.
    """
    if plan is not None and isinstance(plan.shards, shards.FolderShards):
        return _dedup_in(problems, bench, params, earlier, ngram=ngram, max_df=max_df, plan=plan)
    with shards.scratch_plan(shard_rows=plan.shard_rows if plan else shards.DEFAULT_SHARD_ROWS,
                             executor=plan.executor if plan else None) as scratch:
        return _dedup_in(problems, bench, params, earlier, ngram=ngram, max_df=max_df, plan=scratch)


def _dedup_in(problems: pl.DataFrame, bench: pl.DataFrame, params: Params, earlier: VersionIndex, *, ngram: int,
              max_df: int, plan: shards.Plan) -> DedupOutput:
    source = plan.folder / "input.parquet"
    store.write_parquet(problems, source)
    phases = run_phases(source, problems.height, bench, params, earlier, ngram=ngram, max_df=max_df, plan=plan)
    entries = list(kept_entries(plan, phases))
    result = phases.result
    kept, rejected = (pl.concat([pl.read_parquet(f) for f in parts.files]) for parts in (result.kept, result.rejected))
    return DedupOutput(result=store.StageResult(kept=kept, rejected=rejected, stats=result.stats),
                       keys=[k for _, keys, _ in entries for k in keys],
                       signatures=np.concatenate([s for _, _, s in entries]) if entries else
                       np.empty((0, params.num_perm), dtype=np.uint32))


def run(run_dir: Path, config: DedupConfig, *, force: bool = False, executor: Executor | None = None,
        shard_rows: int = shards.DEFAULT_SHARD_ROWS) -> store.Manifest:
    """Run the dedup stage on the pull output of `run_dir`; record kept rows in the version index.

    `executor` runs the phases' tasks here or on a Ray cluster; finished tasks of every phase
    survive a killed run.
    """
    params = Params.from_config(config)
    pulled = store.finished(run_dir, INPUT_STAGE)
    index = open_index(config, run_dir, params)
    inputs = {INPUT_STAGE: pulled.hash(), **index.fingerprint()}
    for source in config.eval_sets:  # benchmark files are inputs too: a changed file recomputes
        if isinstance(source, HubSource) and source.data_files:
            files = source.data_files if isinstance(source.data_files, list) else [source.data_files]
            inputs.update({f"eval:{f}": store.path_hash(Path(f)) for f in files})
    stage_config = {**config.model_dump(mode="json"), "bands": params.bands, "rows": params.rows}

    def compute(plan: shards.Plan) -> store.StageResult:
        phases = run_phases(pulled.path(), pulled.row_count(), load_eval_sets(config.eval_sets), params, index,
                            ngram=config.ngram, max_df=config.max_ngram_df, plan=plan)
        # Safe before the manifest: a version never counts as earlier than itself.
        index.add_chunks(kept_entries(plan, phases))
        return phases.result

    manifest = shards.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, compute=compute,
                                executor=executor, shard_rows=shard_rows, force=force)
    if not index.has_current():  # skipped stage whose index entry was lost: rebuild it, a shard at a time
        index.add_chunks(_entries_of(store.finished(run_dir, STAGE).path(), params, shard_rows))
    return manifest


def _entries_of(path: Path, params: Params, shard_rows: int) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(ids, exact keys, signatures) of a finished output's rows, shard by shard."""
    for start, stop in shards.row_ranges(store.row_count(path), shard_rows):
        kept = store.read_rows(path, start, stop, ["id", "problem"])
        texts = kept["problem"].to_list()
        yield (kept["id"].to_list(), exact_keys(texts),
               minhash.signatures(texts, shingle=params.shingle, num_perm=params.num_perm, seed=params.seed))
