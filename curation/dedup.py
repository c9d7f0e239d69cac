"""The dedup stage: decontamination, earlier versions, exact and MinHash near-duplicates.

Order: a problem that leaks an eval-set item is `contaminated` whatever else it is (eval sets:
Hub benchmarks and procedural held-out sets, the run's own `eval.sets` among them, so that
held-out problems are held out by text, not only by id); then a problem already in an
earlier version of the dataset is `in_earlier_version`; then exact
copies (normalized text) and near-duplicates (MinHash LSH, transitive clusters) keep their
first row. Each rejected row names the row it duplicates (`dup_of`) and the estimated Jaccard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from curation import dedup_shards, minhash, sources
from curation.dedup_index import VersionIndex, open_index
from curation.dedup_shards import exact_keys
from curation.sources import procedural
from machinery import shards, store
from machinery.config import DedupConfig, HubSource, ProceduralSource
from machinery.execution import Executor

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
    """`contamination` from the (n-gram, training row) pairs that hit the benchmark index, gathered from shards.

    For each training row, its smallest non-boilerplate n-gram hash and the first benchmark
    text holding it: the same whatever the shards.
    """
    if len(hits) == 0:
        return {}
    pairs = np.unique(hits, axis=0)
    grams, df = np.unique(pairs[:, 0], return_counts=True)
    boilerplate = grams[df > max_df]
    pairs = pairs[~np.isin(pairs[:, 0], boilerplate)]
    found: dict[int, tuple[int, str]] = {}
    for gram, doc in pairs:
        doc = int(doc)
        if doc in found:
            continue
        bench_idx = int(bench_owner[np.searchsorted(bench_h, gram)])
        found[doc] = (bench_idx, _find_gram(minhash.normalize(train[doc]).split(" "), gram, n))
    return found


def _find_gram(words: list[str], gram: np.uint64, n: int) -> str:
    """The text of the n-gram with this hash in a word list (for the report)."""
    hashes, lengths = minhash.word_hashes([" ".join(words)], {})
    windows, _ = minhash.window_hashes(hashes, lengths, n, short=False, wide=True)
    position = int(np.flatnonzero(windows == gram)[0])
    return " ".join(words[position : position + n])


def _reject(frame: pl.DataFrame, rows: list[int], reason: DedupReason, dup_of: list[str], jaccard: list[float],
            detail: list[str], evidence: dict[str, list[str | None]] | None = None) -> pl.DataFrame:
    """Rejected rows of frame with reason, the row they duplicate, Jaccard and detail.

    `evidence` fills EVIDENCE_COLUMNS (contamination: which benchmark, which of its rows,
    the shared n-gram); other reasons leave them empty.
    """
    evidence = evidence or {}
    return frame[rows].with_columns(
        reject_reason=pl.lit(str(reason)), reject_detail=pl.Series(detail, dtype=pl.String),
        dup_of=pl.Series(dup_of, dtype=pl.String), jaccard=pl.Series(jaccard, dtype=pl.Float64),
        **{name: pl.Series(evidence.get(name, [None] * len(rows)), dtype=pl.String) for name in EVIDENCE_COLUMNS})


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


def dedup(problems: pl.DataFrame, bench: pl.DataFrame, params: Params, earlier: VersionIndex,
          *, ngram: int = 13, max_df: int = 10, plan: shards.Plan | None = None) -> DedupOutput:
    """Split problems into kept and rejected (contaminated, in earlier versions, duplicates).

    `plan` says where the per-row work runs (row shards, LSH bands, components); by default
    here, with shards in memory. The result is the same wherever it runs.
    """
    started = time.time()
    plan = plan or shards.in_memory()
    texts = problems["problem"].to_list()
    bench_texts = bench["problem"].to_list()
    by_ngram = (np.flatnonzero(bench["ngrams"].to_numpy()) if "ngrams" in bench.columns
                else np.arange(bench.height))  # a bench without the column: benchmarks, as before
    bench_h, owner = _ngram_index([bench_texts[i] for i in by_ngram], ngram)
    bench_owner = by_ngram[owner] if len(owner) else owner
    hashing = dedup_shards.Hashing(shingle=params.shingle, num_perm=params.num_perm, seed=params.seed,
                                   bands=params.bands, rows=params.rows, ngram=ngram, bench_grams=np.unique(bench_h))
    labels = dedup_shards.hash_rows(plan, texts, hashing)
    keys, sigs, hits = dedup_shards.gathered(plan, labels, params.num_perm)
    ids = problems["id"].to_list()
    rejected_parts: list[pl.DataFrame] = []
    alive = np.ones(len(texts), dtype=bool)
    stats = DedupStats(rows_in=len(texts), kept=0, rejected=0, bands=params.bands, rows_per_band=params.rows,
                       threshold=params.threshold, earlier_versions=earlier.versions())
    for source, count in bench.group_by("source", maintain_order=True).len().iter_rows():
        stats.eval_items[source] = count

    # 1. Eval-set leakage: a shared n-gram (benchmarks), the same text, or a MinHash near-duplicate.
    if bench.height:
        bench_names = [f"{s}:{i}" for s, i in bench.select("source", "source_id").iter_rows()]
        bench_sigs = minhash.signatures(bench_texts, shingle=params.shingle, num_perm=params.num_perm,
                                        seed=params.seed)
        leaks = {doc: Leak(b, f"shares the {ngram}-gram '{gram}'", float((sigs[doc] == bench_sigs[b]).mean()), gram)
                 for doc, (b, gram) in leaks_from_hits(hits, bench_h, bench_owner, texts, n=ngram,
                                                       max_df=max_df).items()}
        first_of: dict[str, int] = {}
        for b, key in enumerate(exact_keys(bench_texts)):
            first_of.setdefault(key, b)
        for doc in (d for d, key in enumerate(keys) if key in first_of):
            leaks.setdefault(doc, Leak(first_of[keys[doc]], "same text after normalization", 1.0, None))
        for doc, b, j in _bench_matches(plan, labels, sigs, bench_sigs, params):
            leaks.setdefault(doc, Leak(b, f"MinHash near-duplicate (Jaccard {j:.2f})", j, None))
        rows = sorted(leaks)
        sources, source_ids = bench["source"].to_list(), bench["source_id"].to_list()
        evidence = {"benchmark": [sources[leaks[r].bench] for r in rows],
                    "benchmark_id": [source_ids[leaks[r].bench] for r in rows],
                    "matched_ngram": [leaks[r].gram for r in rows]}
        rejected_parts.append(_reject(problems, rows, DedupReason.CONTAMINATED,
                                      [bench_names[leaks[r].bench] for r in rows], [leaks[r].jaccard for r in rows],
                                      [leaks[r].how for r in rows], evidence))
        for r in rows:
            leak, source = leaks[r], sources[leaks[r].bench]
            stats.contaminated_by[source] = stats.contaminated_by.get(source, 0) + 1
            stats.hits.append({"id": ids[r], "benchmark_item": bench_names[leak.bench], "how": leak.how})
            shown = stats.contamination_examples.setdefault(source, [])
            if len(shown) < EXAMPLES_PER_BENCHMARK:
                shown.append({"id": ids[r], "problem": texts[r][:EXAMPLE_CHARS],
                              "benchmark_id": source_ids[leak.bench],
                              "benchmark_problem": bench_texts[leak.bench][:EXAMPLE_CHARS],
                              "evidence": leak.how, "jaccard": f"{leak.jaccard:.2f}"})
        alive[rows] = False

    # 2. Rows already in an earlier version of this dataset (exact or near).
    matches = earlier.match([keys[i] for i in np.flatnonzero(alive)], sigs[alive], params)
    rows = [int(i) for i, m in zip(np.flatnonzero(alive), matches) if m is not None]
    found = [m for m in matches if m is not None]
    rejected_parts.append(_reject(problems, rows, DedupReason.IN_EARLIER_VERSION, [f[0] for f in found],
                                  [f[1] for f in found], [f"already in version {f[2]}" for f in found]))
    alive[rows] = False

    # 3. Exact, then near-duplicates within this version; the first row of a cluster stays.
    live = np.flatnonzero(alive)
    first_of: dict[str, int] = {}
    exact = [(int(i), first_of.setdefault(keys[i], int(i))) for i in live]
    dupes = [(i, f) for i, f in exact if i != f]
    rejected_parts.append(_reject(problems, [i for i, _ in dupes], DedupReason.EXACT_DUPLICATE,
                                  [ids[f] for _, f in dupes], [1.0] * len(dupes),
                                  ["same text after normalization"] * len(dupes)))
    alive[[i for i, _ in dupes]] = False
    live = np.flatnonzero(alive)
    pairs = dedup_shards.candidate_pairs(plan, labels, params.bands, keep=alive)  # numbered within `live`
    pairs = pairs[_jaccard(sigs, live[pairs[:, 0]], live[pairs[:, 1]]) >= params.threshold]
    rep = live[dedup_shards.components(plan, len(live), pairs)]
    near = [(int(i), int(r)) for i, r in zip(live, rep) if i != r]
    near_j = _jaccard(sigs, np.asarray([i for i, _ in near], dtype=np.int64),
                      np.asarray([r for _, r in near], dtype=np.int64)).tolist()
    rejected_parts.append(_reject(problems, [i for i, _ in near], DedupReason.NEAR_DUPLICATE,
                                  [ids[r] for _, r in near], near_j,
                                  [f"MinHash cluster of {ids[r]}" for _, r in near]))
    alive[[i for i, _ in near]] = False
    stats.clusters = int(len(np.unique(rep)))

    kept = problems.filter(pl.Series(alive))
    rejected = pl.concat(rejected_parts, how="vertical")
    stats.kept, stats.rejected = kept.height, rejected.height
    stats.reasons = store.reason_counts(rejected)
    stats.seconds = round(time.time() - started, 3)
    return DedupOutput(result=store.StageResult(kept=kept, rejected=rejected, stats=stats),
                       keys=[k for k, a in zip(keys, alive) if a], signatures=sigs[alive])


def _jaccard(sigs: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of rows left[k] and right[k]: the share of equal signature values."""
    if len(left) == 0:
        return np.empty(0)
    return (sigs[left] == sigs[right]).mean(axis=1)


def _bench_matches(plan: shards.Plan, labels: list[str], sigs: np.ndarray, bench_sigs: np.ndarray, params: Params
                   ) -> list[tuple[int, int, float]]:
    """`minhash.cross_matches(sigs, bench_sigs, ...)` with the banding done by the executor."""
    n = len(sigs)
    if n == 0 or len(bench_sigs) == 0:
        return []
    pairs = dedup_shards.candidate_pairs(plan, labels, params.bands,
                                         extra=minhash.band_keys(bench_sigs, params.bands, params.rows))
    pairs = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]
    scores = (sigs[pairs[:, 0]] == bench_sigs[pairs[:, 1] - n]).mean(axis=1) if len(pairs) else np.empty(0)
    keep = scores >= params.threshold
    return [(int(i), int(j) - n, float(s)) for (i, j), s in zip(pairs[keep], scores[keep])]


def run(run_dir: Path, config: DedupConfig, *, force: bool = False, executor: Executor | None = None,
        shard_rows: int = shards.DEFAULT_SHARD_ROWS) -> store.Manifest:
    """Run the dedup stage on the pull output of `run_dir`; record kept rows in the version index.

    `executor` runs the per-row work (signatures per row shard, LSH bands, components) here or
    on a Ray cluster; finished row shards survive a killed run.
    """
    params = Params.from_config(config)
    pulled = store.finished(run_dir, INPUT_STAGE)
    problems = pulled.read()
    index = open_index(config, run_dir, params)
    inputs = {INPUT_STAGE: pulled.hash(), **index.fingerprint()}
    for source in config.eval_sets:  # benchmark files are inputs too: a changed file recomputes
        if isinstance(source, HubSource) and source.data_files:
            files = source.data_files if isinstance(source.data_files, list) else [source.data_files]
            inputs.update({f"eval:{f}": store.path_hash(Path(f)) for f in files})
    stage_config = {**config.model_dump(mode="json"), "bands": params.bands, "rows": params.rows}

    def compute(plan: shards.Plan) -> store.StageResult:
        output = dedup(problems, load_eval_sets(config.eval_sets), params, index, ngram=config.ngram,
                       max_df=config.max_ngram_df, plan=plan)
        # Safe before the manifest: a version never counts as earlier than itself.
        index.add(output.result.kept["id"].to_list(), output.keys, output.signatures)
        return output.result

    manifest = shards.run_stage(run_dir, STAGE, config=stage_config, inputs=inputs, compute=compute,
                                executor=executor, shard_rows=shard_rows, force=force)
    if not index.has_current():  # skipped stage whose index entry was lost: rebuild it
        kept = store.finished(run_dir, STAGE).read()
        texts = kept["problem"].to_list()
        index.add(kept["id"].to_list(), exact_keys(texts),
                  minhash.signatures(texts, shingle=params.shingle, num_perm=params.num_perm, seed=params.seed))
    return manifest
