"""Dedup and decontamination: clusters, benchmark leaks, and refreshes against earlier versions."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import socket
import threading

import numpy as np
import polars as pl
import pytest

from curation import dedup, minhash, pull
from curation.dedup_index import REDIS_URL_ENV, LegacyIndexError, open_index
from curation.sources import hub
from machinery import store
from machinery.config import DedupConfig, HubSource, ProceduralSource, PullConfig
from machinery.schema import problem_id
from tests.support.redis_server import redis_server

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
    with redis_server(tmp_path) as port:
        yield f"redis://127.0.0.1:{port}/0"


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


class _Payload:
    """A pickle that runs code when loaded: it makes the folder `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_redis_index_keys_are_plain_bytes_and_nothing_read_back_is_unpickled(tmp_path, redis_url):
    import redis

    config = DedupConfig(index="redis", redis_url=redis_url)
    _pull_and_dedup(tmp_path / "ds" / "v1", [ProceduralSource(task="gsm_symbolic", n=20, seed=1)], config)
    client = redis.Redis.from_url(redis_url)
    buckets = [k for k in client.scan_iter(match=b"distillery:ds_bucket_*") if client.type(k) == b"set"]
    members = set().union(*(client.smembers(b) for b in buckets))
    ids = store.finished(tmp_path / "ds" / "v1", "dedup").read()["id"].to_list()
    assert buckets and members == {i.encode() for i in ids}  # the row ids themselves, not pickles of them

    # Whoever can write to the server plants a pickle in every bucket: the next dedup refuses it, unloaded.
    ran = tmp_path / "payload-ran"
    for bucket in buckets:
        client.sadd(bucket, pickle.dumps(_Payload(ran)))
    index = open_index(config, tmp_path / "ds" / "v2", dedup.Params.from_config(config))
    near = np.frombuffer(client.hget("distillery:ds:sig", ids[0]), dtype=np.uint32)[None, :]  # a v1 row's bands
    with pytest.raises(LegacyIndexError, match="pickled"):
        index.match(["a key no earlier row has"], near, dedup.Params.from_config(config))
    assert not ran.exists()


def test_a_redis_index_written_with_pickled_keys_is_refused_naming_it_and_what_to_do(tmp_path, redis_url):
    import redis
    from datasketch import MinHash, MinHashLSH

    # What an older distillery wrote: datasketch's default pickled keys and a recorded version, no format marker.
    old = MinHashLSH(threshold=0.8, num_perm=128, storage_config={"type": "redis", "basename": b"distillery:ds",
                                                                 "redis": {"host": "127.0.0.1",
                                                                           "port": int(redis_url.split(":")[2][:-2])}})
    old.insert("row-1", MinHash(num_perm=128))
    redis.Redis.from_url(redis_url).hset("distillery:ds:fingerprints", "v1", "abc")
    run = tmp_path / "ds" / "v2"
    pull.run(run, PullConfig(seed=5, sources=[ProceduralSource(task="chain_sum", n=5)]))
    with pytest.raises(LegacyIndexError) as refused:
        dedup.run(run, DedupConfig(index="redis", redis_url=redis_url))
    message = str(refused.value)
    assert "'distillery:ds'" in message and "pickled keys" in message and "--pattern 'distillery:ds[:_]*'" in message
    assert "re-running dedup on the earlier versions" in message


def test_the_redis_index_connects_with_the_whole_url_from_the_workers_environment(tmp_path, monkeypatch):
    import redis

    password = "redis-pw-4f8a"
    sources = [ProceduralSource(task="gsm_symbolic", n=12, seed=1)]
    with redis_server(tmp_path, password=password) as port:
        monkeypatch.setenv(REDIS_URL_ENV, f"redis://:{password}@127.0.0.1:{port}/0")
        _pull_and_dedup(tmp_path / "ds" / "v1", sources, DedupConfig(index="redis"))
        second = _pull_and_dedup(tmp_path / "ds" / "v2", sources,
                                 DedupConfig(index="redis", redis_url=f"redis://127.0.0.1:{port}/0"))
        assert second.counts["kept"] == 0  # every row is in v1, found through the authenticated index

        with pytest.raises(ValueError, match="names another server") as elsewhere:
            dedup.run(tmp_path / "ds" / "v2", DedupConfig(index="redis", redis_url=f"redis://127.0.0.1:{port + 1}/0"),
                      force=True)
        assert password not in str(elsewhere.value)

        monkeypatch.delenv(REDIS_URL_ENV)  # the config alone holds no password: the server refuses it
        with pytest.raises(redis.AuthenticationError):
            dedup.run(tmp_path / "ds" / "v2", DedupConfig(index="redis", redis_url=f"redis://127.0.0.1:{port}/0"),
                      force=True)


def test_a_rediss_url_opens_a_tls_connection(tmp_path, monkeypatch):
    import redis

    # A listener that records the first bytes a client sends, then hangs up: a TLS ClientHello starts with 0x16.
    listener = socket.create_server(("127.0.0.1", 0))
    first: list[bytes] = []

    def record() -> None:
        conn, _ = listener.accept()
        with conn:
            first.append(conn.recv(16))

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    monkeypatch.setenv(REDIS_URL_ENV, f"rediss://:pw@127.0.0.1:{listener.getsockname()[1]}/0")
    run = tmp_path / "ds" / "v1"
    pull.run(run, PullConfig(seed=5, sources=[ProceduralSource(task="chain_sum", n=3)]))
    with pytest.raises(redis.ConnectionError):
        dedup.run(run, DedupConfig(index="redis"))
    thread.join(timeout=10)
    listener.close()
    assert first and first[0][:1] == b"\x16"  # a TLS handshake record, not a plaintext RESP command


# Decontamination against procedural held-out sets: held out by text, not only by id.
ONE_DIGIT_SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
                  "allow_parentheses": False, "allow_negation": False}  # 100 distinct problems: seeds collide


def test_the_runs_eval_sets_decontaminate_training_by_text(tmp_path):
    from curation import sources
    from machinery.config import Config, EvalConfig

    held = ProceduralSource(task="basic_arithmetic", n=40, seed=98765, options=ONE_DIGIT_SUMS)
    config = Config(seed=5, sources=[ProceduralSource(task="basic_arithmetic", n=60, options=ONE_DIGIT_SUMS)],
                    eval=EvalConfig(sets=[held]))
    assert config.dedup_stage().eval_sets == [held]  # listed once, in eval.sets: dedup gets it too
    run = tmp_path / "ds" / "v1"
    pull.run(run, config.pull_stage())
    held_texts = set(minhash.normalize_many(sources.load(held, config.seed)[0]["problem"].to_list()))
    pulled = store.finished(run, "pull").read()
    copies = [t in held_texts for t in minhash.normalize_many(pulled["problem"].to_list())]
    assert sum(copies) >= 5  # the two seeds do share problems word for word

    dedup.run(run, config.dedup_stage())
    kept = store.finished(run, "dedup").read()
    assert not held_texts & set(minhash.normalize_many(kept["problem"].to_list()))
    rejected = pl.read_parquet(run / "dedup" / "rejected.parquet").filter(pl.col("reject_reason") == "contaminated")
    name = "procedural/basic_arithmetic (seed 98765)"
    exact = rejected.filter(pl.col("reject_detail") == "same text after normalization")
    # Every word-for-word copy leaves with its evidence: the eval set, its item, and that item's text.
    assert sorted(exact["id"]) == sorted(pulled.filter(pl.Series(copies))["id"])
    assert (exact["benchmark"] == name).all() and exact["matched_ngram"].is_null().all()
    items = dict(zip(*sources.load(held, config.seed)[0].select("source_id", "problem")))
    for row in exact.iter_rows(named=True):
        assert minhash.normalize(items[row["benchmark_id"]]) == minhash.normalize(row["problem"])
        assert row["dup_of"] == f"{name}:{row['benchmark_id']}"
    stats = store.finished(run, "dedup").manifest.counts
    assert stats["rejected"] >= rejected.height


def test_a_procedural_eval_set_shares_templates_not_ngram_leaks():
    """A generator's template is shared by every one of its problems: only same or near-same texts count."""
    shop = "at the toy shop on the corner of the main street next to the old train station; how many now?"
    train = pl.DataFrame({"id": ["a", "b"], "problem": [f"Liam has 17 marbles and buys 4 bags of 9 marbles {shop}",
                                                        f"Maya has 23 stickers and buys 6 bags of 12 stickers {shop}"]})
    bench = pl.DataFrame({"source": ["procedural/toy (seed 1)", "procedural/toy (seed 1)"], "source_id": ["0", "1"],
                          "problem": [f"Omar has 5 cards and buys 2 bags of 3 cards {shop}",
                                      train["problem"][1].upper()],
                          "ngrams": [False, False]})
    result = dedup.dedup(train, bench, _params(), _NoEarlier()).result
    assert result.kept["id"].to_list() == ["a"]  # the shared template is no leak
    leak = result.rejected.row(0, named=True)
    assert (leak["id"], leak["reject_reason"], leak["benchmark_id"]) == ("b", "contaminated", "1")
    # The same pair against a Hub benchmark: a shared 13-gram of human text is a leak.
    as_hub = dedup.dedup(train, bench.with_columns(ngrams=pl.lit(True)), _params(), _NoEarlier()).result
    assert as_hub.kept.is_empty()
