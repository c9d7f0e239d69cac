"""Near-duplicate clustering, texts to cluster labels: ours against datasketch's fast path.

Ours: `curation.dedup.cluster_ids` (bulk NumPy MinHash, NumPy LSH banding, connected components).
Baseline, as a competent datasketch user writes it: the same 5-word shingles (batch-normalized,
equal to `curation.minhash.shingles`), `MinHash.bulk(..., hashfunc=xxhash.xxh32_intdigest)`,
`MinHashLSH` filled in an `insertion_session()`, one `query` per document, candidates kept at
`MinHash.jaccard >= threshold`, union-find. Same N documents, num_perm, threshold and bands.

The corpus plants clusters of light edits, near-threshold positives (exact shingle Jaccard
0.82-0.95) and near-threshold negatives (0.55-0.75, must stay apart); every planted pair's
exact Jaccard is measured and printed. The sides alternate over --rounds rounds; the figures
are the median and the min..max of each. Last line: `speedup_vs_datasketch=X`.

    python benchmarks/dedup.py [--n 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import NamedTuple

import xxhash
from datasketch import MinHash, MinHashLSH

from curation import dedup, minhash

VOCAB = [f"w{i}" for i in range(20_000)]
SHINGLE = 5
NUM_PERM = 128
POSITIVE = (0.82, 0.95)  # near-threshold positives: exact Jaccard just above 0.8
NEGATIVE = (0.55, 0.75)  # near-threshold negatives: exact Jaccard below 0.8, must stay apart
# family kind -> probability: singletons, light-edit clusters, near positives, near negatives
FAMILIES = {"single": 0.40, "light": 0.25, "near_positive": 0.175, "near_negative": 0.175}


class Corpus(NamedTuple):
    """Texts, their true cluster ids, and the planted (original, variant) pairs by kind."""

    texts: list[str]
    truth: list[int]
    pairs: dict[str, list[tuple[int, int]]]


def _shingle_set(words: list[str]) -> set[str]:
    """Word 5-grams of already-normalized words (the construction's exact Jaccard)."""
    if len(words) <= SHINGLE:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def exact_jaccard(a: set, b: set) -> float:
    """Set Jaccard |a & b| / |a | b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def _token(rng: random.Random) -> str:
    """A word, or a number (15%): numbers are what math problems change between siblings."""
    return rng.choice(VOCAB) if rng.random() < 0.85 else str(rng.randint(1, 9999))


def _light_edit(words: list[str], rng: random.Random) -> str:
    """A copy with one light edit: adjacent swap, one number changed, respacing+case, or none."""
    edited = list(words)
    kind = rng.randrange(4)
    i = rng.randrange(len(edited) - 1)
    if kind == 0:
        edited[i], edited[i + 1] = edited[i + 1], edited[i]
    elif kind == 1:
        edited[i] = str(rng.randint(1, 9999))
    if kind == 2:  # normalizes back to the original: Jaccard 1
        return "  ".join(edited).upper()
    return " ".join(edited)


def _heavy_op(words: list[str], rng: random.Random) -> list[str]:
    """One rewrite: substitute a word, rewrite a 3-8 word clause, insert one, or delete one."""
    out = list(words)
    i = rng.randrange(len(out))
    size = rng.randint(3, 8)
    kind = rng.randrange(4)
    if kind == 0:
        out[i] = _token(rng)
    elif kind == 1:
        out[i : i + size] = [_token(rng) for _ in range(size)]
    elif kind == 2:
        out[i:i] = [_token(rng) for _ in range(size)]
    elif len(out) > 40:
        del out[i : i + size]
    return out


def _variant_in(words: list[str], band: tuple[float, float], rng: random.Random) -> list[str]:
    """Rewrites of words, one op at a time, until the exact shingle Jaccard falls in band."""
    original = _shingle_set(words)
    for _ in range(200):
        target = rng.uniform(*band)
        variant = list(words)
        j = 1.0
        while j > target:
            variant = _heavy_op(variant, rng)
            j = exact_jaccard(original, _shingle_set(variant))
        if band[0] <= j <= band[1]:
            return variant
    raise RuntimeError(f"no variant with Jaccard in {band} after 200 tries; the words were {words[:8]}...")


def make_corpus(n: int, seed: int = 0) -> Corpus:
    """n shuffled texts of 80-120 tokens in planted families (see FAMILIES)."""
    rng = random.Random(seed)
    families: list[tuple[str, list[str]]] = []
    total = 0
    while total < n:
        kind = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
        words = [_token(rng) for _ in range(rng.randint(80, 120))]
        members = [" ".join(words)]
        if kind == "light":
            members += [_light_edit(words, rng) for _ in range(rng.randint(1, 3))]
        elif kind != "single":
            members.append(" ".join(_variant_in(words, POSITIVE if kind == "near_positive" else NEGATIVE, rng)))
        members = members[: n - total]
        families.append((kind, members))
        total += len(members)
    order = list(range(n))
    rng.shuffle(order)  # duplicates are not neighbours in real data
    texts, truth = [""] * n, [0] * n
    pairs: dict[str, list[tuple[int, int]]] = {kind: [] for kind in FAMILIES if kind != "single"}
    slot = iter(order)
    for cluster, (kind, members) in enumerate(families):
        at = [next(slot) for _ in members]
        for position, text in zip(at, members):
            texts[position] = text
            # a negative variant is its own cluster: the pair must not be merged
            truth[position] = cluster if kind != "near_negative" or position == at[0] else n + cluster
        pairs.get(kind, []).extend((at[0], other) for other in at[1:])
    return Corpus(texts, truth, pairs)


def shingle_bytes(texts: list[str]) -> list[list[bytes]]:
    """`minhash.shingles(text, 5)` UTF-8 encoded, with one batch normalization for all texts.

    `minhash.shingles` normalizes one text per call through polars (~0.7 ms a call here): a
    datasketch user batches it, so the baseline is not charged for a per-call overhead.
    """
    out = []
    for normalized in minhash.normalize_many(texts):
        words = [w for w in normalized.encode("utf-8").split(b" ") if w]
        if len(words) <= SHINGLE:
            out.append([b" ".join(words)] if words else [])
        else:
            out.append([b" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)])
    return out


def run_ours(texts: list[str], threshold: float, bands: int, rows: int) -> list[int]:
    """Our path; it picks the same (bands, rows) through `minhash.choose_bands`."""
    return dedup.cluster_ids(texts, threshold=threshold, num_perm=NUM_PERM, shingle=SHINGLE)


def run_datasketch(texts: list[str], threshold: float, bands: int, rows: int) -> list[int]:
    """datasketch's documented fast path, texts to cluster labels."""
    # xxh32 is a C 32-bit hash (~50 ns a call here against ~540 ns for datasketch's default
    # sha1_hash32), the width the default affine32 scheme takes. Our `shingle_hash32` (needed
    # only for bit-identical signatures) costs ~3.4 us a call, so the baseline does not use it.
    sketches = MinHash.bulk(shingle_bytes(texts), num_perm=NUM_PERM, seed=1, hashfunc=xxhash.xxh32_intdigest)
    # Same bands as ours: datasketch's own choice at 0.8/128 (9 x 13) misses more true pairs.
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, params=(bands, rows))
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m, check_duplication=False)  # keys are unique by construction
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j > i and m.jaccard(sketches[j]) >= threshold:  # each pair once
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(texts))]


def pairs_of(labels: list[int]) -> set[tuple[int, int]]:
    """All pairs of items that share a label."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return {p for members in groups.values() if len(members) > 1 for p in itertools.combinations(members, 2)}


def quality(found: list[int], corpus: Corpus) -> tuple[float, float, dict[str, float]]:
    """Pair recall and precision against the truth, and the share merged of each planted kind."""
    true_pairs, found_pairs = pairs_of(corpus.truth), pairs_of(found)
    common = len(true_pairs & found_pairs)
    merged = {kind: sum(found[a] == found[b] for a, b in pairs) / max(1, len(pairs))
              for kind, pairs in corpus.pairs.items()}
    return common / max(1, len(true_pairs)), common / max(1, len(found_pairs)), merged


def check_corpus(corpus: Corpus) -> None:
    """Print the exact Jaccard of every planted pair, through the shingles both sides use."""
    sample = corpus.texts[:300]
    if shingle_bytes(sample) != [[s.encode("utf-8") for s in minhash.shingles(t, SHINGLE)] for t in sample]:
        raise RuntimeError("shingle_bytes differs from curation.minhash.shingles on the first 300 texts")
    sets = [set(s) for s in shingle_bytes(corpus.texts)]
    for kind, pairs in corpus.pairs.items():
        js = sorted(exact_jaccard(sets[a], sets[b]) for a, b in pairs)
        if not js:
            continue
        below = sum(j < 0.8 for j in js)
        print(f"  {kind:<13} {len(pairs):>6} pairs: exact Jaccard min {js[0]:.3f} median "
              f"{statistics.median(js):.3f} max {js[-1]:.3f}; {below} below 0.8")


def time_rounds(sides: dict[str, Callable[[], list[int]]], rounds: int) -> tuple[dict[str, list[float]],
                                                                                  dict[str, list[int]]]:
    """Seconds per round of each side, alternating which side runs first; labels of round 1."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    labels: dict[str, list[int]] = {}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            started = time.perf_counter()
            found = sides[name]()
            seconds[name].append(time.perf_counter() - started)
            if labels.setdefault(name, found) != found:
                raise RuntimeError(f"{name} gave different clusters in round {r + 1} than in round 1")
        print(f"round {r + 1}: " + ", ".join(f"{name} {seconds[name][-1]:.2f} s" for name in names))
    return seconds, labels


def main() -> None:
    """Build the corpus, time both sides, print quality, then `speedup_vs_datasketch=X`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="documents, the same for both sides")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (at least 3)")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    if args.n < 100:
        parser.error(f"--n must be at least 100. Received: {args.n}")
    if args.rounds < 3:
        parser.error(f"--rounds must be at least 3 for a median and a spread. Received: {args.rounds}")
    bands, rows = minhash.choose_bands(args.threshold, NUM_PERM)
    print(f"n={args.n} threshold={args.threshold} num_perm={NUM_PERM} shingle={SHINGLE} lsh={bands}x{rows} "
          f"rounds={args.rounds} cpus={os.cpu_count()} datasketch={version('datasketch')} "
          f"xxhash={version('xxhash')} numpy={version('numpy')}")
    started = time.perf_counter()
    corpus = make_corpus(args.n)
    print(f"corpus built in {time.perf_counter() - started:.1f} s; planted pairs:")
    check_corpus(corpus)

    # Warm both sides (imports, polars' thread pool, cached permutations) outside the timing.
    for side in (run_ours, run_datasketch):
        side(corpus.texts[:2000], args.threshold, bands, rows)
    sides = {name: (lambda side=side: side(corpus.texts, args.threshold, bands, rows))
             for name, side in (("ours", run_ours), ("datasketch", run_datasketch))}
    seconds, labels = time_rounds(sides, args.rounds)

    scores = {}
    for name in sides:
        median = statistics.median(seconds[name])
        recall, precision, merged = quality(labels[name], corpus)
        scores[name] = (recall, precision)
        print(f"{name}: median {median:.2f} s (min {min(seconds[name]):.2f} .. max {max(seconds[name]):.2f}) "
              f"= {args.n / median:,.0f} docs/s; pair recall {recall:.4f} precision {precision:.4f}; merged "
              + " ".join(f"{kind} {share:.4f}" for kind, share in merged.items()))
    speedup = statistics.median(seconds["datasketch"]) / statistics.median(seconds["ours"])
    lo = min(seconds["datasketch"]) / max(seconds["ours"])
    hi = max(seconds["datasketch"]) / min(seconds["ours"])
    print(f"ratio datasketch/ours: median {speedup:.2f} (worst {lo:.2f} .. best {hi:.2f})")
    print(f"recall_ours={scores['ours'][0]:.4f} precision_ours={scores['ours'][1]:.4f} "
          f"recall_datasketch={scores['datasketch'][0]:.4f} precision_datasketch={scores['datasketch'][1]:.4f}")
    print(f"speedup_vs_datasketch={speedup:.2f}")


if __name__ == "__main__":
    main()
