"""Bulk MinHash and LSH banding agree with datasketch bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from curation import minhash


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)] + [str(i) for i in range(100)]
    docs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 80))) for _ in range(n)]
    # near copies, so that LSH has candidates to find
    docs += [d.replace("word1", "word2", 1) + " extra" for d in docs[: n // 10]]
    return docs + ["", "Two words", "It costs $1,000,000.50, or 3.5 each!"]


def test_normalize_keeps_values_and_unifies_formatting():
    assert minhash.normalize("He paid $1,000 -- then 2.50 MORE!") == "he paid 1000 then 2.50 more"
    assert minhash.normalize("1,000 apples") == minhash.normalize("1000   apples.")
    assert minhash.normalize("3 apples") != minhash.normalize("4 apples")  # numbers are not placeholders
    assert minhash.normalize("a 1,0000 b") == "a 1 0000 b"  # not a thousands comma


def test_signatures_equal_datasketch_fed_the_same_shingles():
    docs = _corpus(300)
    ours = minhash.signatures(docs, num_perm=128, chunk_docs=97)
    for doc, row in zip(docs, ours):
        reference = MinHash(num_perm=128, seed=1, hashfunc=minhash.shingle_hash32)
        reference.update_batch([s.encode("utf-8") for s in minhash.shingles(doc, 5)])
        assert np.array_equal(reference.hashvalues, row)


def test_signatures_load_as_lean_minhash_and_estimate_jaccard_like_datasketch():
    a, b = minhash.signatures(["the cat sat on the mat today and then left", "the cat sat on the mat today and then ran"])
    lean_a = LeanMinHash(seed=1, hashvalues=a, scheme="affine32")
    lean_b = LeanMinHash(seed=1, hashvalues=b, scheme="affine32")
    assert lean_a.jaccard(lean_b) == pytest.approx(minhash.jaccard(np.stack([a, b]), np.array([[0, 1]]))[0])


def test_candidate_pairs_equal_datasketch_lsh_on_2000_documents():
    docs = _corpus(1820)[:2000]
    sigs = minhash.signatures(docs)
    bands, rows = minhash.choose_bands(0.8, 128)
    ours = {tuple(p) for p in minhash.candidate_pairs(sigs, bands, rows).tolist()}
    lsh = MinHashLSH(threshold=0.8, num_perm=128, params=(bands, rows))
    leans = [LeanMinHash(seed=1, hashvalues=s, scheme="affine32") for s in sigs]
    for i, lean in enumerate(leans):
        lsh.insert(i, lean)
    theirs = {(min(i, j), max(i, j)) for i, lean in enumerate(leans) for j in lsh.query(lean) if j != i}
    assert len(theirs) > 100
    assert ours == theirs


def test_bands_are_chosen_to_miss_few_pairs_and_recorded():
    bands, rows = minhash.choose_bands(0.8, 128)
    assert (bands, rows) == (16, 8)
    assert minhash.false_negative_probability(0.8, bands, rows) < minhash.false_negative_probability(0.8, 9, 13)


def test_components_are_transitive_and_pick_the_first_index():
    pairs = np.array([[1, 3], [3, 5], [0, 2]])
    assert minhash.components(6, pairs).tolist() == [0, 1, 0, 1, 4, 1]
