"""Inputs of the stage benchmark (benchmarks/scale_stages.py), written as local files in Hub formats.

Nothing here imports the repository: the same files feed the baseline and the new code.
- `problems`: N synthetic problems in GSM8K's Hub layout (`question`, `answer` with `#### 1`),
  parquet shards `data/train-0000i-of-0000n.parquet`; ~10% of rows in planted near-duplicate
  clusters of 2-5 (an original and 1-4 copies, each with at most one word edit near an end:
  adjacent swap, deletion or a changed number, plus case and punctuation changes that
  normalize away; exact shingle Jaccard to the original >= 0.95), and 25 GSM8K test questions upper-cased (leaks). `planted.parquet` records every
  planted row's id, cluster and whether it is the cluster's original.
- `check`: an independent corpus not made by the repo's generators: GSM8K train questions
  and copies of some of them with light edits of their own kind (numbers changed, two
  sentences swapped, a word dropped).
Row ids are the pull stage's: sha256("openai/gsm8k" US "train/<row>")[:16].
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import polars as pl

HUB_ID = "openai/gsm8k"
VOCAB = 20_000
WORDS = (80, 120)  # words per problem, as benchmarks/dedup.py's corpus
PLANTED_SHARE = 0.10
LEAKS = 25
SHARD_ROWS = 250_000


def row_id(index: int, split: str = "train") -> str:
    """The pull stage's id of row `index` of a GSM8K-format source (machinery.schema.problem_id)."""
    return hashlib.sha256(f"{HUB_ID}\x1f{split}/{index}".encode()).hexdigest()[:16]


def _vocabulary(rng: np.random.Generator) -> np.ndarray:
    """Pseudo-words of 3-9 letters: texts that read as words, not as w123 tokens."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(VOCAB * 2)}
    return np.array(sorted(words)[:VOCAB])


def _texts(n: int, rng: np.random.Generator, vocab: np.ndarray, chunk: int = 100_000) -> list[str]:
    """n random texts; 15% of the words are numbers (what math problems change). In chunks: bounded memory."""
    out: list[str] = []
    numerals = np.array([str(i) for i in range(10_000)], dtype=object)
    pool = np.concatenate([vocab.astype(object), numerals])
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lengths = rng.integers(WORDS[0], WORDS[1] + 1, m)
        total = int(lengths.sum())
        picks = rng.integers(0, len(vocab), total)
        numbers = rng.random(total) < 0.15
        picks[numbers] = len(vocab) + rng.integers(1, 10_000, int(numbers.sum()))
        flat = pool[picks].tolist()
        bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        out += [" ".join(flat[bounds[i]:bounds[i + 1]]) for i in range(m)]
    return out


def _edit(words: list[str], rng: random.Random) -> str:
    """A near copy: at most one word edit, then case or punctuation changes that normalize away."""
    edited = list(words)
    kind = rng.randrange(4)
    # Within the first or last two words: at most 2 of the 76+ shingles change, so the copy's
    # exact Jaccard to its original is >= 0.95 and a correct dedup finds every cluster (the
    # near-threshold pairs are benchmarks/dedup.py's business).
    i = rng.choice((0, len(edited) - 2))
    if kind == 0:
        edited[i], edited[i + 1] = edited[i + 1], edited[i]
    elif kind == 1:
        del edited[i]
    elif kind == 2:
        edited[i] = str(rng.randint(1, 9999))
    text = " ".join(edited)
    style = rng.randrange(3)
    if style == 0:
        text = text.upper()
    elif style == 1:
        text = text.replace(" ", ", ", 3) + "?"
    return text


def _write_shards(folder: Path, questions: list[str], split: str = "train") -> list[Path]:
    """GSM8K-layout parquet shards under folder/data, as the Hub names them."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-len(questions) // SHARD_ROWS))
    paths = []
    for shard in range(count):
        part = questions[shard * SHARD_ROWS:(shard + 1) * SHARD_ROWS]
        path = data / f"{split}-{shard:05d}-of-{count:05d}.parquet"
        pl.DataFrame({"question": part, "answer": ["Add them up.\n#### 1"] * len(part)}).write_parquet(path)
        paths.append(path)
    return paths


def problems(folder: Path, n: int, leaks: list[str], seed: int = 1) -> dict:
    """Write the synthetic corpus of n rows into folder (once); return its description."""
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    rng = np.random.default_rng(seed)
    edits = random.Random(seed)
    vocab = _vocabulary(rng)
    n_body = n - len(leaks)
    n_planted_target = int(n_body * PLANTED_SHARE)
    sizes = []
    while sum(sizes) < n_planted_target:
        sizes.append(edits.randint(2, 5))
    n_originals = n_body - sum(sizes) + len(sizes)  # singletons plus one original per cluster
    texts: list[str] = _texts(n_originals, rng, vocab) + [""] * (n_body - n_originals)
    # Copies go to random rows, so clusters span shards (as a real corpus's duplicates do).
    where = rng.permutation(n_body).tolist()  # logical row -> file row
    rows, clusters, originals = [], [], []
    next_copy = n_originals
    for cluster, size in enumerate(sizes):
        source = cluster  # the first len(sizes) originals head the clusters
        rows.append(where[source]); clusters.append(cluster); originals.append(True)
        for _ in range(size - 1):
            texts[next_copy] = _edit(texts[source].split(" "), edits)
            rows.append(where[next_copy]); clusters.append(cluster); originals.append(False)
            next_copy += 1
    placed: list[str] = [""] * n_body
    for logical, text in enumerate(texts):
        placed[where[logical]] = text
    placed += [q.upper() for q in leaks]
    _write_shards(folder, placed)
    leak_rows = list(range(n_body, n))
    pl.DataFrame({"row": rows, "id": [row_id(r) for r in rows], "cluster": clusters, "original": originals}
                 ).write_parquet(folder / "planted.parquet")
    pl.DataFrame({"row": leak_rows, "id": [row_id(r) for r in leak_rows]}).write_parquet(folder / "leaks.parquet")
    meta = {"rows": n, "planted_rows": len(rows), "clusters": len(sizes), "leaks": len(leaks),
            "shards": max(1, -(-n // SHARD_ROWS)), "seed": seed}
    meta_path.write_text(json.dumps(meta))
    return meta


_NUMBER = re.compile(r"\d+")
_SENTENCE = re.compile(r"(?<=[.?!])\s+")


def _check_edit(question: str, rng: random.Random) -> str:
    """A light edit of a real question: a number changed, two sentences swapped, or a word dropped."""
    kind = rng.randrange(3)
    if kind == 0 and _NUMBER.search(question):
        found = list(_NUMBER.finditer(question))
        m = found[rng.randrange(len(found))]
        return question[:m.start()] + str(int(m.group()) + rng.randint(1, 9)) + question[m.end():]
    sentences = _SENTENCE.split(question)
    if kind == 1 and len(sentences) >= 3:
        i = rng.randrange(len(sentences) - 2)  # the question sentence stays last
        sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
        return " ".join(sentences)
    words = question.split(" ")
    if len(words) > 4:
        del words[rng.randrange(1, len(words) - 1)]
    return " ".join(words)


def check(folder: Path, train_jsonl: Path, rows: int = 20_000, seed: int = 7) -> dict:
    """Write the independent check corpus (GSM8K train questions and edited copies) into folder (once)."""
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    questions = [json.loads(line)["question"] for line in train_jsonl.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    out = list(questions)
    while len(out) < rows:
        out.append(_check_edit(questions[rng.randrange(len(questions))], rng))
    rng.shuffle(out)
    _write_shards(folder, out)
    meta = {"rows": len(out), "originals": len(questions), "copies": len(out) - len(questions), "seed": seed}
    meta_path.write_text(json.dumps(meta))
    return meta
