"""Scale-out: the dedup and filter stages' work on the local engine against the Ray engine.

Both engines do the same work on the same inputs: the stage functions (`dedup.dedup`,
`filters.filter_traces`) with the same row shards kept on disk, differing only in the
executor. The baseline is our own local engine. Inputs, built once:
- dedup: N synthetic problems of 80-120 words (benchmarks/dedup.py's corpus: ~30% have
  near or exact twins) plus 25 planted copies of GSM8K test questions, against GSM8K test and
  MATH-500 as benchmarks (decontamination included);
- filter: M real traces (tests/support/traces.py: reference solutions, a third spoiled),
  16 samples per problem of GSM8K train (plain-number answers: the checker's fast path) and
  MATH-500 (LaTeX answers: math-verify through sympy), 90/10 by problems.
Ray runs as one local node with `--num-cpus` CPUs (2 here), started once (its start time is
reported apart); each measurement is a fresh driver process (its Ray connect time is reported
apart too). Rounds alternate the engine order. Peak RSS: the driver and its own children
(getrusage), and every Ray process (psutil, sampled every 0.2 s). Last line:
`ray_overhead_ratio=X`, Ray seconds over local seconds, dedup and filter together (medians).

    python benchmarks/scale.py [--problems 1000000] [--traces 200000] [--rounds 3]

The modes `stages`, `compare` and `check` (benchmarks/scale_stages.py, scale_corpus.py) measure
the stages as a user runs them instead: `distillery pull` of a synthetic corpus written as
local GSM8K-format parquet shards (~10% of rows in planted near-duplicate clusters of 2-5, and
25 GSM8K test leaks), then `distillery dedup` and `distillery filter` in fresh processes on
fresh run folders, per engine, for each `--code` folder (an extracted baseline tree and the
new tree, alternating per round): peak RSS of the stage process (VmHWM) or Ray driver and the
largest Ray worker's, wall time, docs/s, peak disk of the run folder; results as JSON.

    python benchmarks/scale.py stages --code /work/base --code /work/main --problems 1000000 4000000 \
        --traces 200000 800000 --engines local,ray --rounds 3 --out /work/bench/results.json
    python benchmarks/scale.py compare RUN_A/v1 RUN_B/v1 --planted /work/bench/corpus-1000000/planted.parquet
    python benchmarks/scale.py check --code /work/base --code /work/main --engines local,ray
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and sys.argv[1:2] and sys.argv[1] in ("stages", "compare", "check"):
    # The CLI-level modes (benchmarks/scale_stages.py) measure a code folder given by --code: they
    # must not import this tree's curation, which may be another version or mid-edit.
    sys.path.insert(0, str(Path(__file__).parent))
    import scale_stages

    scale_stages.main(sys.argv[1:])
    sys.exit(0)
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from curation import dedup, filters  # noqa: E402
from curation.sources import hub  # noqa: E402
from machinery import shards, store  # noqa: E402
from machinery.config import DedupConfig, FilterConfig  # noqa: E402
from machinery.execution import LocalExecutor, RayExecutor  # noqa: E402
from tests.support import traces  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WORKS = ("dedup", "filter")
SAMPLES = 16


class _NoEarlier:
    """No earlier dataset version: the dedup index is not what this measures."""

    def versions(self) -> list[str]:
        return []

    def match(self, keys, sigs, params):
        return [None] * len(keys)


def prepare(folder: Path, n_problems: int, n_traces: int) -> dict[str, object]:
    """Write the inputs of both workloads as parquet; return what they hold."""
    from benchmarks.dedup import corpus

    test = hub.load("openai/gsm8k", DATA / "gsm8k" / "test.jsonl", "test")[0]
    math500 = hub.load("HuggingFaceH4/MATH-500", DATA / "math500" / "test.jsonl", "test")[0]
    texts, _ = corpus(n_problems - 25, seed=1)
    planted = test.head(25)["problem"].to_list()
    texts += [q.upper() for q in planted]  # leaks a decontamination must find
    pl.DataFrame({"id": [f"syn-{i}" for i in range(len(texts))], "source": "synthetic",
                  "source_id": [str(i) for i in range(len(texts))], "problem": texts, "answer": "1", "solution": None,
                  "meta": "{}"}, schema_overrides={"solution": pl.String}).write_parquet(folder / "problems.parquet")
    pl.concat([test, math500]).select("source", "source_id", "problem").write_parquet(folder / "bench.parquet")

    train = hub.load("openai/gsm8k", DATA / "gsm8k" / "train.jsonl", "train")[0]
    n_problems_t = max(1, n_traces // SAMPLES)
    n_latex = n_problems_t // 10
    picked = pl.concat([_cycle(train, n_problems_t - n_latex), _cycle(math500, n_latex)])
    picked.write_parquet(folder / "trace_problems.parquet")
    traces.generations(picked, SAMPLES).write_parquet(folder / "generations.parquet")
    return {"problems": len(texts), "bench": test.height + math500.height, "traces": picked.height * SAMPLES,
            "trace_problems": picked.height, "latex_problems": n_latex}


def _cycle(frame: pl.DataFrame, n: int) -> pl.DataFrame:
    """n rows of frame, repeating it with fresh ids when it has fewer."""
    parts, copy = [], 0
    while sum(p.height for p in parts) < n:
        take = frame.head(n - sum(p.height for p in parts))
        parts.append(take if copy == 0 else take.with_columns(id=pl.col("id") + f"#{copy}"))
        copy += 1
    return pl.concat(parts)


class TimedExecutor(LocalExecutor):
    """The local executor, timing each kind of work: what runs in parallel on Ray, and what stays serial."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}

    def map(self, fn, items, *, name, shared=None):
        for index, item in enumerate(items):
            started = time.perf_counter()
            result = fn(item, **(shared or {}))
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.items[name] = self.items.get(name, 0) + 1
            yield index, result


def phases(args: argparse.Namespace, folder: Path) -> None:
    """One local run of each workload with its work timed by kind: the figures behind the capacity estimate."""
    for work in WORKS:
        executor = TimedExecutor()
        plan = shards.Plan(executor=executor, shards=shards.FolderShards(folder / "shards" / f"phases-{work}",
                                                                         "0" * 16), shard_rows=args.shard_rows)
        if work == "dedup":
            problems, bench = pl.read_parquet(folder / "problems.parquet"), pl.read_parquet(folder / "bench.parquet")
            started = time.perf_counter()
            result = dedup.dedup(problems, bench, dedup.Params.from_config(DedupConfig()), _NoEarlier(),
                                 plan=plan).result
        else:
            problems = pl.read_parquet(folder / "trace_problems.parquet")
            generations = pl.read_parquet(folder / "generations.parquet")
            started = time.perf_counter()
            result = filters.filter_traces(generations, problems, FilterConfig(), plan=plan)
        total = time.perf_counter() - started
        rows = result.stats.rows_in
        parts = ", ".join(f"{name} {s:.1f} s in {executor.items[name]} items ({rows / s:,.0f} rows/s)"
                          for name, s in executor.seconds.items())
        serial = total - sum(executor.seconds.values())
        print(f"phases {work}: {rows} rows in {total:.1f} s; {parts}; serial rest (driver) {serial:.1f} s "
              f"({rows / serial:,.0f} rows/s); driver peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB", flush=True)
        plan.shards.remove()


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process: print a JSON line of its figures."""
    folder = Path(args.folder)
    connect = 0.0
    if args.engine == "ray":
        executor = RayExecutor(args.address)
        started = time.perf_counter()
        executor.connect()
        connect = time.perf_counter() - started
    else:
        executor = LocalExecutor()
    plan = shards.Plan(executor=executor, shards=shards.FolderShards(folder / "shards" / args.tag, "0" * 16),
                       shard_rows=args.shard_rows)
    if args.work == "dedup":
        problems, bench = pl.read_parquet(folder / "problems.parquet"), pl.read_parquet(folder / "bench.parquet")
        params = dedup.Params.from_config(DedupConfig())
        started = time.perf_counter()
        result = dedup.dedup(problems, bench, params, _NoEarlier(), plan=plan).result
    else:
        problems = pl.read_parquet(folder / "trace_problems.parquet")
        generations = pl.read_parquet(folder / "generations.parquet")
        started = time.perf_counter()
        result = filters.filter_traces(generations, problems, FilterConfig(), plan=plan)
    seconds = time.perf_counter() - started
    plan.shards.remove()
    print(json.dumps({
        "seconds": seconds, "connect_s": connect, "rows": result.stats.rows_in, "reasons": result.stats.reasons,
        "output": hashlib.sha256(store.parquet_bytes(result.kept) + store.parquet_bytes(result.rejected)).hexdigest(),
        "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


class Sampler:
    """Peak RSS of every process of a Ray cluster, by kind, sampled in a thread (only when `on`)."""

    def __init__(self, cluster, on: bool, period_s: float = 0.2):
        self.cluster, self.on, self.period_s = cluster, on, period_s
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        if self.on:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.on:
            self._thread.join()

    def _run(self) -> None:
        import psutil

        kinds: dict[int, str] = {}
        procs: list[psutil.Process] = []
        last_listed = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_listed > 2.0:  # new workers appear; listing costs more than reading RSS
                procs, last_listed = self.cluster.tree(), time.monotonic()
            for proc in procs:
                try:
                    if proc.pid not in kinds:
                        kinds[proc.pid] = _kind(proc.name(), " ".join(proc.cmdline()))
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if rss > self.peaks.get(proc.pid, ("", 0.0))[1]:
                    self.peaks[proc.pid] = (kinds[proc.pid], rss)
            self._stop.wait(self.period_s)

    def by_kind(self) -> dict[str, float]:
        """The largest peak of any one process of each kind."""
        found: dict[str, float] = {}
        for kind, rss in self.peaks.values():
            found[kind] = max(found.get(kind, 0.0), rss)
        return found


def _kind(name: str, cmdline: str) -> str:
    if "multiprocessing" in cmdline:
        return "checker pool (child of a worker)"
    if "default_worker.py" in cmdline or (name.startswith("ray::") and "Agent" not in name):
        return "ray worker"
    return "ray system (gcs, raylet, agents)"


def measure(args: argparse.Namespace, folder: Path, engine: str, work: str, tag: str, cluster) -> dict:
    """Run one measurement in a fresh process; its figures plus the Ray processes' peak RSS."""
    argv = [sys.executable, __file__, "--child", "--engine", engine, "--work", work, "--folder", str(folder),
            "--tag", tag, "--shard-rows", str(args.shard_rows), "--address", cluster.address]
    env = {**os.environ, **cluster.driver_env, "PYTHONPATH": str(ROOT)}
    with Sampler(cluster, on=engine == "ray") as sampler:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {work} failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["ray_rss_mb"] = sampler.by_kind() if engine == "ray" else {}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=1_000_000)
    parser.add_argument("--traces", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the Ray node")
    parser.add_argument("--shard-rows", type=int, default=shards.DEFAULT_SHARD_ROWS)
    parser.add_argument("--phases", action="store_true", help="time each kind of work of one local run instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--engine", "--work", "--folder", "--tag", "--address"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from tests.support.ray_cluster import RayCluster

    # A background job ignores SIGINT: let SIGTERM unwind too, so the Ray node and temp files go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="scale-", dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        mix = prepare(folder, args.problems, args.traces)
        print(f"inputs ({time.perf_counter() - started:.0f} s): {mix['problems']} problems vs {mix['bench']} "
              f"benchmark items; {mix['traces']} traces of {mix['trace_problems']} problems "
              f"({mix['latex_problems']} MATH-500 with LaTeX answers, the rest GSM8K plain numbers), "
              f"{SAMPLES} samples each; shard_rows={args.shard_rows}", flush=True)
        if args.phases:
            return phases(args, folder)
        started = time.perf_counter()
        with RayCluster(nodes=1, cpus=args.cpus, dashboard=False) as cluster:
            print(f"ray: one node with {args.cpus} CPUs started in {time.perf_counter() - started:.1f} s", flush=True)
            results: dict[tuple[str, str], list[dict]] = {}
            for round_ in range(args.rounds):
                order = ("local", "ray") if round_ % 2 == 0 else ("ray", "local")
                for work in WORKS:
                    for engine in order:
                        figures = measure(args, folder, engine, work, f"{engine}-{work}-{round_}", cluster)
                        results.setdefault((work, engine), []).append(figures)
                        print(f"round {round_ + 1} {work:6} {engine:5} {figures['seconds']:7.1f} s "
                              f"({figures['rows'] / figures['seconds']:,.0f} docs/s)", flush=True)
                    outputs = {results[work, e][-1]["output"] for e in order}
                    if len(outputs) != 1:
                        raise RuntimeError(f"round {round_ + 1}: {work} outputs differ between engines")
        report(results)


def report(results: dict[tuple[str, str], list[dict]]) -> None:
    """Median, spread, docs/s and peak RSS per (work, engine); the overhead ratio last."""
    medians: dict[tuple[str, str], float] = {}
    for (work, engine), runs in sorted(results.items()):
        seconds = [r["seconds"] for r in runs]
        medians[work, engine] = median = statistics.median(seconds)
        rows = runs[0]["rows"]
        print(f"{work:6} {engine:5}: median {median:7.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f}, "
              f"{len(runs)} rounds), {rows / median:,.0f} docs/s; peak RSS driver "
              f"{max(r['driver_rss_mb'] for r in runs):,.0f} MB, its children "
              f"{max(r['children_rss_mb'] for r in runs):,.0f} MB"
              + (f", Ray connect {statistics.median(r['connect_s'] for r in runs):.1f} s" if engine == "ray" else ""))
        if engine == "ray":
            kinds: dict[str, float] = {}
            for r in runs:
                for kind, rss in r["ray_rss_mb"].items():
                    kinds[kind] = max(kinds.get(kind, 0.0), rss)
            print("               peak RSS per Ray process: " + ", ".join(f"{k} {v:,.0f} MB"
                                                                       for k, v in sorted(kinds.items())))
    print("reasons: " + "; ".join(f"{w}: {results[w, 'local'][0]['reasons']}" for w in WORKS))
    for work in WORKS:
        print(f"{work}: ray/local = {medians[work, 'ray'] / medians[work, 'local']:.2f}")
    total = sum(medians[w, "ray"] for w in WORKS) / sum(medians[w, "local"] for w in WORKS)
    print(f"ray_overhead_ratio={total:.2f}")


if __name__ == "__main__":
    main()
