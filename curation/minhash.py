"""Bulk MinHash signatures and LSH banding in NumPy, bit-identical to datasketch.

datasketch 2.0's default `affine32` scheme takes a 32-bit hash of each shingle (here
`shingle_hash32`, given to datasketch as its `hashfunc`), pre-mixes it with the MurmurHash3
finalizer, then applies `a*h + b` in wrapping uint32 arithmetic with
permutation parameters drawn from `MinHash(num_perm, seed)`; a signature is the minimum per
permutation. Doing the permutations for a whole batch at once in NumPy gives the same
values as `MinHash.update` per shingle at a fraction of the cost, and banding the signature
matrix in NumPy replaces `MinHashLSH.insert`/`query` (about 5 KB of RAM per document).
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_MAX_GROUP_PAIRS = 64  # above this many members, a band bucket links members to its first only
_FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF


def normalize_many(texts: Sequence[str]) -> list[str]:
    """Lowercase, "1,000" -> "1000", punctuation to spaces (decimal points kept), spaces collapsed.

    Number values are kept: replacing them by a placeholder would merge problems that
    differ only in their numbers.
    """
    series = pl.Series("t", list(texts), dtype=pl.String).str.to_lowercase()
    # Thousands commas need look-arounds, which polars' regex engine lacks: Python's re
    # handles the few texts that have a digit-comma-digit.
    has_comma = series.str.contains(r"\d,\d")
    if has_comma.any():
        fixed = [_THOUSANDS.sub("", t) if c else t for t, c in zip(series.to_list(), has_comma.to_list())]
        series = pl.Series("t", fixed, dtype=pl.String)
    series = (
        series.str.replace_all(r"(\d)\.(\d)", "${1}\x00${2}")  # protect decimal points
        .str.replace_all(r"[^\w\x00]+", " ")  # punctuation and whitespace runs -> one space
        .str.replace_all("\x00", ".", literal=True)
        .str.strip_chars()
    )
    return series.to_list()


def normalize(text: str) -> str:
    """Normalize one text (see `normalize_many`)."""
    return normalize_many([text])[0]


def shingles(text: str, k: int) -> list[str]:
    """Word k-grams of the normalized text (one shingle of all words when there are fewer)."""
    words = normalize(text).split(" ") if text.strip() else []
    words = [w for w in words if w]
    if len(words) <= k:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hash: the first 4 bytes of SHA-1, little-endian."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def shingle_hash32(shingle: bytes) -> int:
    """The 32-bit hash of a shingle: FNV-style fold of its words' `sha1_hash32`.

    Pass it to datasketch as `MinHash(hashfunc=shingle_hash32)` to get our signatures:
    hashing words once and folding them in NumPy is what makes bulk signatures fast.
    """
    h = 0
    for word in shingle.split(b" "):
        h = ((h * _FNV_PRIME) & _MASK32) ^ sha1_hash32(word)
    return h


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) uint32 permutation parameters of datasketch's `MinHash(num_perm, seed)`."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before permuting."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def word_hashes(normalized: list[str], cache: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """`sha1_hash32` of every word of every normalized text (flat), and words per text."""
    words = pl.Series("w", normalized, dtype=pl.String).str.split(" ")
    lengths = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode()
    empty = np.asarray([not t for t in normalized], dtype=bool)
    if empty.any():  # "" splits into [""]: such texts have no words
        lengths[empty] = 0
        flat = flat.filter(flat != "")
    # Hash each distinct word once (SHA-1 in Python), then map codes to hashes in NumPy.
    vocabulary = flat.unique(maintain_order=True)
    vocab_hashes = np.fromiter(
        (cache.get(w) or cache.setdefault(w, sha1_hash32(w.encode("utf-8"))) for w in vocabulary.to_list()),
        np.uint32, count=len(vocabulary))
    return vocab_hashes[flat.cast(pl.Enum(vocabulary)).to_physical().to_numpy()], lengths


def window_hashes(hashes: np.ndarray, lengths: np.ndarray, k: int, *, short: bool, wide: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fold every window of k consecutive word hashes: (flat window hashes, windows per text).

    `short=True` gives a text with fewer than k words one window of all its words (MinHash
    shingles); `short=False` gives it none (decontamination n-grams). `wide` folds in 64 bits.
    """
    doc_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    counts = np.where(lengths >= k, lengths - k + 1, np.minimum(lengths, 1) if short else 0)
    doc_of = np.repeat(np.arange(len(lengths)), counts)
    starts = doc_start[doc_of] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    width = np.minimum(lengths[doc_of], k)
    dtype, prime = (np.uint64, np.uint64(0x100000001B3)) if wide else (np.uint32, np.uint32(_FNV_PRIME))
    h = np.zeros(len(starts), dtype=dtype)
    with np.errstate(over="ignore"):
        for j in range(k):
            take = j < width
            h[take] = (h[take] * prime) ^ hashes[starts[take] + j].astype(dtype)
    return h, counts


def _min_permuted(mixed: np.ndarray, bounds: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray,
                  block_shingles: int = 1024) -> None:
    """out[d] = min over doc d's shingles of a*h+b (uint32), in cache-sized blocks.

    Blocks of about a thousand shingles keep the (shingles x num_perm) scratch in L2 cache:
    about 8x faster on these 2 cores than one big block.
    """
    n_docs = len(bounds) - 1
    scratch = np.empty((block_shingles, len(a)), dtype=np.uint32)
    i = 0
    while i < n_docs:
        j = int(np.searchsorted(bounds, bounds[i] + block_shingles, side="right")) - 1
        j = min(max(j, i + 1), n_docs)
        lo, hi = bounds[i], bounds[j]
        block = scratch[: hi - lo] if hi - lo <= block_shingles else np.empty((hi - lo, len(a)), np.uint32)
        np.multiply(mixed[lo:hi, None], a[None, :], out=block)  # wraps mod 2^32, as datasketch
        np.add(block, b[None, :], out=block)
        out[i:j] = np.minimum.reduceat(block, bounds[i:j] - lo, axis=0)
        i = j


def signatures(texts: Sequence[str], *, shingle: int = 5, num_perm: int = 128, seed: int = 1,
               chunk_docs: int = 20_000) -> np.ndarray:
    """MinHash signatures (n_docs x num_perm, uint32) of texts' word shingles.

    Equal to datasketch's `MinHash(num_perm, seed, hashfunc=shingle_hash32)` updated with
    `shingles(text, shingle)` encoded as UTF-8; a text without words gets the all-max
    signature of an empty MinHash.
    """
    a, b = permutations(num_perm, seed)
    out = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    cache: dict[str, int] = {}
    for lo in range(0, len(texts), chunk_docs):
        words, lengths = word_hashes(normalize_many(texts[lo : lo + chunk_docs]), cache)
        hashes, counts = window_hashes(words, lengths, shingle, short=True)
        nonempty = np.flatnonzero(counts > 0)
        bounds = np.concatenate(([0], np.cumsum(counts[nonempty])))
        block = np.empty((len(nonempty), num_perm), dtype=np.uint32)
        _min_permuted(_fmix32(hashes), bounds, a, b, block)
        out[lo + nonempty] = block
        if len(cache) > 1 << 21:  # the cache only saves time; bound its memory
            cache.clear()
    return out


def false_negative_probability(threshold: float, bands: int, rows: int) -> float:
    """Probability mass of pairs above the threshold that share no band (as datasketch defines it)."""
    s = np.linspace(threshold, 1.0, 2001)
    missed = 1.0 - (1.0 - (1.0 - s ** rows) ** bands)
    return float(np.trapezoid(missed, s))


def choose_bands(threshold: float, num_perm: int, max_false_negative: float = 0.002) -> tuple[int, int]:
    """(bands, rows) with the most rows per band whose false-negative mass stays small.

    datasketch's balanced choice at 0.8/128 (9 x 13) missed ~13% of true pairs on a test
    corpus; candidates are verified by estimated Jaccard, so extra candidates cost only time.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if false_negative_probability(threshold, bands, rows) <= max_false_negative:
            return bands, rows
    return num_perm, 1


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (doc, band): equal keys mean equal band values (n_docs x bands)."""
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands*rows must be <= num_perm: {bands}*{rows} > {sigs.shape[1]}")
    mult = np.random.default_rng(0x5EED).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
            key = np.zeros(sigs.shape[0], dtype=np.uint64)
            for j in range(rows):  # polynomial hash mod 2^64 of the band's values
                key = (key ^ block[:, j]) * mult[j]
            keys[:, band] = key ^ (key >> np.uint64(29))
    return keys


def bucket_pairs(order: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Pairs of rows whose keys are equal, given rows sorted by key (vectorized, no Python loop)."""
    n = len(order)
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    sizes = np.diff(np.concatenate((starts, [n])))
    size_of = np.repeat(sizes, sizes)  # bucket size at each sorted position
    offset = np.arange(n) - np.repeat(starts, sizes)  # position within the bucket
    small = (size_of > 1) & (size_of <= _MAX_GROUP_PAIRS)
    # all pairs within small buckets: position p pairs with positions p+1 .. size-1
    per = np.where(small, size_of - 1 - offset, 0)
    left = np.repeat(np.arange(n), per)
    right = left + 1 + (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per))
    # a huge bucket (boilerplate) links each member to its first member only
    big = (size_of > _MAX_GROUP_PAIRS) & (offset > 0)
    star_right = np.flatnonzero(big)
    star_left = star_right - offset[big]
    a = order[np.concatenate((left, star_left))]
    b = order[np.concatenate((right, star_right))]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Unique pairs (i < j) that share at least one band, as an (n_pairs, 2) int64 array."""
    n = len(sigs)
    keys = band_keys(sigs, bands, rows)
    encoded = []
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")
        pairs = bucket_pairs(order, keys[order, band]).astype(np.int64)
        encoded.append(pairs[:, 0] * n + pairs[:, 1])
    unique = np.unique(np.concatenate(encoded)) if encoded else np.empty(0, dtype=np.int64)
    return np.stack([unique // n, unique % n], axis=1) if n else np.empty((0, 2), dtype=np.int64)


def jaccard(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of each pair: the share of equal signature values."""
    if len(pairs) == 0:
        return np.empty(0)
    return (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)


def cross_matches(sigs: np.ndarray, other: np.ndarray, bands: int, rows: int, threshold: float
                  ) -> list[tuple[int, int, float]]:
    """(row of sigs, row of other, estimated Jaccard) for LSH candidates across the two sets at >= threshold."""
    if len(sigs) == 0 or len(other) == 0:
        return []
    stacked = np.concatenate([sigs, other])
    pairs = candidate_pairs(stacked, bands, rows)
    pairs = pairs[(pairs[:, 0] < len(sigs)) & (pairs[:, 1] >= len(sigs))]
    scores = jaccard(stacked, pairs)
    keep = scores >= threshold
    return [(int(i), int(j) - len(sigs), float(s)) for (i, j), s in zip(pairs[keep], scores[keep])]


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """For each of n items, the smallest index in its connected component (transitive)."""
    if len(pairs) == 0:
        return np.arange(n)
    graph = coo_array((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]
