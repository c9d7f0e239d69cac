"""Dedup throughput: our bulk MinHash + NumPy LSH against the plain datasketch loop.

Builds an N-document corpus of math-problem-length texts with known near-duplicate clusters
(word swaps, number changes, whitespace/case edits, exact copies), then measures, in the
same run, end-to-end docs/s (signatures + LSH + clusters) and pair recall/precision of both.
The baseline runs on the first --baseline-n documents (it is ~30x slower); its rate is
docs/s either way. Last line: `speedup_vs_datasketch=X`.

    python benchmarks/dedup.py [--n 100000] [--baseline-n 20000]
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import time

import numpy as np

from curation import dedup, minhash

VOCAB = [f"w{i}" for i in range(20_000)]


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """n texts of 80-120 words and their true cluster ids (about 30% of texts have a twin).

    Texts are long enough that one edit keeps a copy's Jaccard with its original above 0.8,
    so every designed pair is a pair the threshold should find.
    """
    rng = random.Random(seed)
    texts: list[str] = []
    truth: list[int] = []
    cluster = 0
    while len(texts) < n:
        words = [rng.choice(VOCAB) if rng.random() < 0.85 else str(rng.randint(1, 9999))
                 for _ in range(rng.randint(80, 120))]
        members = [" ".join(words)]
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            edited = list(words)
            kind = rng.randrange(4)
            i = rng.randrange(len(edited) - 1)
            if kind == 0:
                edited[i], edited[i + 1] = edited[i + 1], edited[i]
            elif kind == 1:
                edited[-1] = str(rng.randint(1, 9999))
            members.append("  ".join(edited).upper() if kind == 2 else " ".join(edited))
        texts += members
        truth += [cluster] * len(members)
        cluster += 1
    return texts[:n], truth[:n]


def pairs_of(labels) -> set[tuple[int, int]]:
    """All pairs of items that share a label."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return {p for members in groups.values() if len(members) > 1 for p in itertools.combinations(members, 2)}


def quality(found, truth) -> tuple[float, float]:
    """Pair recall and precision of found clusters against the true ones."""
    true_pairs, found_pairs = pairs_of(truth), pairs_of(found)
    common = len(true_pairs & found_pairs)
    return common / max(1, len(true_pairs)), common / max(1, len(found_pairs))


def datasketch_loop(texts: list[str], threshold: float, bands: int, rows: int) -> list[int]:
    """The textbook loop: MinHash + update per shingle, MinHashLSH insert then query, union-find."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=128, params=(bands, rows))
    hashes = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128)
        for shingle in minhash.shingles(text, 5):
            m.update(shingle.encode("utf-8"))
        lsh.insert(i, m)
        hashes.append(m)
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if j != i and m.jaccard(hashes[j]) >= threshold:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(texts))]


def main() -> None:
    """Run both, print figures, then `speedup_vs_datasketch=X`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--baseline-n", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    texts, truth = corpus(args.n)
    bands, rows = minhash.choose_bands(args.threshold, 128)
    minhash.permutations(128, 1)  # warm the import of datasketch for both sides

    started = time.perf_counter()
    ours = dedup.cluster_ids(texts, threshold=args.threshold, num_perm=128, shingle=5)
    ours_s = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ours_rate = args.n / ours_s
    recall, precision = quality(ours, truth)
    print(f"ours: {args.n} docs in {ours_s:.2f} s = {ours_rate:,.0f} docs/s; recall {recall:.4f} "
          f"precision {precision:.4f}; LSH {bands} bands x {rows} rows; peak RSS {peak_mib:,.0f} MiB")

    m = min(args.n, args.baseline_n)
    started = time.perf_counter()
    theirs = datasketch_loop(texts[:m], args.threshold, bands, rows)
    base_s = time.perf_counter() - started
    base_rate = m / base_s
    recall, precision = quality(theirs, truth[:m])
    print(f"datasketch loop: {m} docs in {base_s:.2f} s = {base_rate:,.0f} docs/s; recall {recall:.4f} "
          f"precision {precision:.4f}")
    sub_recall, sub_precision = quality(np.asarray(ours[:m]), truth[:m]) if m < args.n else (recall, precision)
    print(f"ours on the same {m} docs: recall {sub_recall:.4f} precision {sub_precision:.4f}")
    print(f"speedup_vs_datasketch={ours_rate / base_rate:.1f}")


if __name__ == "__main__":
    main()
