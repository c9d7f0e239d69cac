"""The stage benchmark of `benchmarks/scale.py stages|compare|check`: the real CLI on pulled folders.

Every measured command is `python -m flows.cli <stage> --run R` run in a fresh process whose
working directory and PYTHONPATH are a code folder (`--code`), so one script measures the
baseline (an extracted older tree) and the new code alike. This module imports nothing of the
repository at its top: only the `inputs` helper (run as a child process with the measured code
on its path) and the Ray test cluster (tests/support/ray_cluster.py, beside this script) do.

Layout under --bench (default /work/bench):
- corpus-<N>/: the synthetic problems (benchmarks/scale_corpus.py), GSM8K's Hub layout;
- pulled-<label>-<N>/v1: `distillery pull` of that corpus by one code folder (pull is not
  measured; each measurement hard-links its `pull/` into a fresh run folder);
- filter-<label>-<M>/v1: M traces as a finished `generate` stage and their problems as a
  finished `dedup` stage (machinery.store.run_stage, so the manifests are real);
- runs/<label>-<stage>-<engine>-<size>-r<round>/v1: one measurement (deleted after it unless kept).
Figures per measurement: wall seconds of the CLI process (start to exit) and the stage's own
`seconds`, docs/s, peak RSS of the stage process (VmHWM sampled every 0.2 s from /proc, and
wait4's ru_maxrss, which also covers its waited-for children), for Ray the largest peak of any
one Ray worker and of the Ray system processes (psutil, every 0.2 s), and the run folder's
peak disk use beyond its input stages (sampled every second). Decontamination is against
GSM8K test and MATH-500 from /work/shared/data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SAMPLES = 16
DUP_REASONS = ("exact_duplicate", "near_duplicate")
NICE = 0  # set from --nice


# ---------------------------------------------------------------- config and environment

def stage_sets(corpus: Path, engine: str, address: str | None) -> list[str]:
    """The --set overrides of every command: the corpus as a Hub source, the benchmarks, the engine."""
    source = {"kind": "hub", "id": "openai/gsm8k", "split": "train", "data_files": str(corpus / "data")}
    evals = [{"kind": "hub", "id": "openai/gsm8k", "split": "test", "data_files": str(DATA / "gsm8k" / "test.jsonl")},
             {"kind": "hub", "id": "HuggingFaceH4/MATH-500", "split": "test",
              "data_files": str(DATA / "math500" / "test.jsonl")}]
    sets = [f"sources={json.dumps([source])}", f"eval.sets={json.dumps(evals)}", f"execution.engine={engine}"]
    if address:
        sets.append(f"execution.address={address}")
    return sets


def code_env(code: Path, bench: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that runs `code`: its tree first on the path, offline, caches under bench."""
    return {**os.environ, **(extra or {}), "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(bench / "hf-cache"), "PYTHONUNBUFFERED": "1"}


def label_of(code: Path) -> str:
    """A short name of a code folder: its last path part (base, main)."""
    return code.resolve().name


# ---------------------------------------------------------------- sampling

def _vm_kb(pid: int, field: str) -> int:
    """A `Vm*` field of /proc/<pid>/status in kB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def folder_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes allocated to the files under folder, leaving out its top-level entries named in skip."""
    total = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if current == folder and entry.name in skip:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class Sampler:
    """Peaks while a stage runs: its VmHWM, the run folder's disk use, and (with a cluster) Ray processes."""

    def __init__(self, pid: int, run_dir: Path, skip: tuple[str, ...], cluster=None, period_s: float = 0.2):
        self.pid, self.run_dir, self.skip, self.cluster, self.period_s = pid, run_dir, skip, cluster, period_s
        self.hwm_kb = 0
        self.disk_bytes = 0
        self.ray_peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_disk = last_listed = 0.0
        procs: list = []
        kinds: dict[int, str] = {}
        while not self._stop.is_set():
            self.hwm_kb = max(self.hwm_kb, _vm_kb(self.pid, "VmHWM"))
            now = time.monotonic()
            if now - last_disk > 1.0:
                self.disk_bytes = max(self.disk_bytes, folder_bytes(self.run_dir, self.skip))
                last_disk = now
            if self.cluster is not None:
                if now - last_listed > 2.0:
                    procs, last_listed = self.cluster.tree(), now
                self._ray(procs, kinds)
            self._stop.wait(self.period_s)

    def _ray(self, procs: list, kinds: dict[int, str]) -> None:
        import psutil

        for proc in procs:
            try:
                if proc.pid not in kinds:
                    kinds[proc.pid] = _kind(proc.name(), " ".join(proc.cmdline()))
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            if rss > self.ray_peaks.get(proc.pid, ("", 0.0))[1]:
                self.ray_peaks[proc.pid] = (kinds[proc.pid], rss)

    def ray_by_kind(self) -> dict[str, float]:
        """The largest peak RSS (MB) of any one Ray process of each kind."""
        found: dict[str, float] = {}
        for kind, rss in self.ray_peaks.values():
            found[kind] = round(max(found.get(kind, 0.0), rss), 1)
        return found


def _kind(name: str, cmdline: str) -> str:
    if "multiprocessing" in cmdline:
        return "checker pool (child of a worker)"
    if "default_worker.py" in cmdline or (name.startswith("ray::") and "Agent" not in name):
        return "ray worker"
    return "ray system (gcs, raylet, agents)"


# ---------------------------------------------------------------- running the CLI

def run_cli(code: Path, bench: Path, stage: str, run_dir: Path, sets: list[str], *, skip: tuple[str, ...] = (),
            cluster=None, nice: int = 0, log: Path | None = None) -> dict:
    """`distillery <stage> --run run_dir` of `code` in a child process; its figures (RuntimeError if it fails)."""
    # `nice` execs the command: the child's pid is the stage process's own.
    argv = [*(["nice", "-n", str(nice)] if nice else []), sys.executable, "-m", "flows.cli", stage, "--run", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    log = log or run_dir.parent / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = code_env(code, bench, cluster.driver_env if cluster is not None else None)
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
        with Sampler(proc.pid, run_dir, skip, cluster) as sampler:
            # wait4 on this child alone: its own rusage (ru_maxrss covers it and its waited-for children).
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} on {run_dir} ({code}) exited {proc.returncode}; log {log}:\n"
                           f"{log.read_text(errors='replace')[-4000:]}")
    figures = {"wall_s": round(wall, 2), "rss_hwm_mb": round(sampler.hwm_kb / 1024, 1),
               "wait4_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
               "disk_peak_mb": round(sampler.disk_bytes / 2**20, 1), "ray_rss_mb": sampler.ray_by_kind()}
    stats_path = run_dir / stage / "stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        figures.update(rows=stats["rows_in"], kept=stats["kept"], rejected=stats["rejected"],
                       reasons=stats.get("reasons", {}), stage_s=stats.get("seconds"),
                       docs_per_s=round(stats["rows_in"] / wall, 1))
        figures["disk_final_mb"] = round(folder_bytes(run_dir, skip) / 2**20, 1)
        figures["output_sha256"] = output_hash(run_dir / stage)
    return figures


def output_hash(stage_dir: Path) -> str:
    """sha256 of a stage's kept and rejected parquet files: equal outputs, equal hashes."""
    digest = hashlib.sha256()
    for name in ("data.parquet", "rejected.parquet"):
        digest.update((stage_dir / name).read_bytes())
    return digest.hexdigest()


def link_tree(source: Path, target: Path) -> None:
    """A copy of source at target made of hard links (inputs are only read: no bytes copied)."""
    shutil.copytree(source, target, copy_function=os.link)


def fresh_run(bench: Path, name: str, inputs: Path, stages: tuple[str, ...]) -> Path:
    """runs/<name>/v1 (its own dataset folder: the dedup index of earlier versions stays empty) with input stages."""
    dataset = bench / "runs" / name
    if dataset.exists():
        shutil.rmtree(dataset)
    run_dir = dataset / "v1"
    run_dir.mkdir(parents=True)
    for stage in stages:
        link_tree(inputs / stage, run_dir / stage)
    return run_dir


# ---------------------------------------------------------------- inputs

def corpus_dir(bench: Path, n: int) -> Path:
    """The synthetic corpus of n problems, written once."""
    sys.path.insert(0, str(Path(__file__).parent))
    import scale_corpus

    folder = bench / f"corpus-{n}"
    started = time.perf_counter()
    meta = scale_corpus.problems(folder, n, _leaks())
    print(f"corpus {n:,}: {meta['planted_rows']:,} planted rows in {meta['clusters']:,} clusters, "
          f"{meta['leaks']} leaks ({time.perf_counter() - started:.0f} s)", flush=True)
    return folder


def _leaks(count: int = 25) -> list[str]:
    lines = (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:count]]


def pulled(code: Path, bench: Path, n: int, corpus: Path | None = None, name: str | None = None) -> Path:
    """The run folder holding `distillery pull` of corpus-<n> by `code` (pulled once, then reused)."""
    corpus = corpus or corpus_dir(bench, n)
    run_dir = bench / (name or f"pulled-{label_of(code)}-{n}") / "v1"
    if (run_dir / "pull" / "manifest.json").is_file():
        return run_dir
    figures = run_cli(code, bench, "pull", run_dir, stage_sets(corpus, "local", None))
    print(f"pull {n:,} ({label_of(code)}): {figures['wall_s']:.0f} s, {figures.get('kept')} kept, "
          f"peak RSS {figures['rss_hwm_mb']:,.0f} MB", flush=True)
    (run_dir.parent / "pull-figures.json").write_text(json.dumps(figures, indent=1))
    return run_dir


def filter_inputs(code: Path, bench: Path, traces: int) -> Path:
    """The run folder holding `traces` traces as finished generate and dedup stages, written by `code` (once)."""
    run_dir = bench / f"filter-{label_of(code)}-{traces}" / "v1"
    if (run_dir / "generate" / "manifest.json").is_file() and (run_dir / "dedup" / "manifest.json").is_file():
        return run_dir
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "inputs", str(run_dir), str(traces)], cwd=code,
                   env=code_env(code, bench), check=True)
    print(f"filter inputs {traces:,} ({label_of(code)}): {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def _cycle(frame: pl.DataFrame, n: int) -> pl.DataFrame:
    """n rows of frame, repeating it with fresh ids when it has fewer."""
    parts, copy = [], 0
    while sum(p.height for p in parts) < n:
        take = frame.head(n - sum(p.height for p in parts))
        parts.append(take if copy == 0 else take.with_columns(id=pl.col("id") + f"#{copy}"))
        copy += 1
    return pl.concat(parts)


def write_filter_inputs(run_dir: Path, n_traces: int) -> None:
    """(Child, measured code on the path.) The generate and dedup stages of the filter benchmark.

    The trace mix of the old benchmark: 16 samples per problem, 90% GSM8K train problems
    (plain-number answers), 10% MATH-500 (LaTeX answers), through tests/support/traces.py.
    """
    from curation.sources import hub
    from machinery import store
    from tests.support import traces

    train = hub.load("openai/gsm8k", DATA / "gsm8k" / "train.jsonl", "train")[0]
    math500 = hub.load("HuggingFaceH4/MATH-500", DATA / "math500" / "test.jsonl", "test")[0]
    n_problems = max(1, n_traces // SAMPLES)
    n_latex = n_problems // 10
    picked = pl.concat([_cycle(train, n_problems - n_latex), _cycle(math500, n_latex)])
    generations = traces.generations(picked, SAMPLES)

    def stage(kept: pl.DataFrame):
        def compute() -> store.StageResult:
            rejected = kept.clear().with_columns(reject_reason=pl.lit(None, pl.String))
            stats = store.StageStats(rows_in=kept.height, kept=kept.height, rejected=0)
            return store.StageResult(kept=kept, rejected=rejected, stats=stats)
        return compute

    store.run_stage(run_dir, "dedup", config={"benchmark": "scale filter problems"}, inputs={}, compute=stage(picked))
    store.run_stage(run_dir, "generate", config={"benchmark": "scale filter traces", "samples": SAMPLES},
                    inputs={"dedup": store.finished(run_dir, "dedup").hash()}, compute=stage(generations))


# ---------------------------------------------------------------- comparison

def outcomes(run_dir: Path, stage: str = "dedup") -> pl.DataFrame:
    """id, status (kept/rejected), reject_reason and dup_of of every row of a finished stage."""
    kept = pl.read_parquet(run_dir / stage / "data.parquet", columns=["id"])
    rejected = pl.read_parquet(run_dir / stage / "rejected.parquet")
    dup_of = rejected["dup_of"] if "dup_of" in rejected.columns else pl.Series([None] * rejected.height, dtype=pl.String)
    return pl.concat([
        kept.with_columns(status=pl.lit("kept"), reject_reason=pl.lit(None, pl.String), dup_of=pl.lit(None, pl.String)),
        rejected.select("id", status=pl.lit("rejected"), reject_reason=pl.col("reject_reason"), dup_of=dup_of)])


def compare(a_dir: Path, b_dir: Path, planted: Path | None = None, show: int = 20) -> dict:
    """Agreement of two dedup outputs on the same corpus, their disagreements, and planted-cluster recall."""
    a, b = outcomes(a_dir), outcomes(b_dir)
    joined = a.join(b, on="id", how="full", suffix="_b", coalesce=True)
    same_verdict = (joined["status"].eq_missing(joined["status_b"])
                    & joined["reject_reason"].eq_missing(joined["reject_reason_b"]))
    differ = joined.filter(~same_verdict)
    dup_of_differs = joined.filter(same_verdict & ~joined["dup_of"].eq_missing(joined["dup_of_b"])).height
    found = {"rows": joined.height, "agreement_pct": round(100 * (1 - differ.height / max(1, joined.height)), 4),
             "disagreements": differ.height, "same_verdict_other_dup_of": dup_of_differs,
             "kept_sets_equal": set(a.filter(pl.col("status") == "kept")["id"].to_list())
             == set(b.filter(pl.col("status") == "kept")["id"].to_list()),
             "first_disagreements": differ.head(show).to_dicts()}
    if planted is not None and planted.is_file():
        found["recall_a"] = recall(a, planted)
        found["recall_b"] = recall(b, planted)
    return found


def recall(outcome: pl.DataFrame, planted: Path) -> dict:
    """Planted clusters found: every member but one rejected as a duplicate (exact or near)."""
    rows = pl.read_parquet(planted).join(outcome, on="id", how="left")
    per = rows.group_by("cluster").agg(size=pl.len(), dups=pl.col("reject_reason").is_in(DUP_REASONS).sum())
    complete = per.filter(pl.col("dups") == pl.col("size") - 1).height
    copies = int((per["size"] - 1).sum())
    caught = int(per.select(pl.min_horizontal(pl.col("dups"), pl.col("size") - 1)).to_series().sum())
    leaks_path = planted.with_name("leaks.parquet")
    leaks = {}
    if leaks_path.is_file():
        found = pl.read_parquet(leaks_path).join(outcome, on="id", how="left")
        leaks = {"leaks": found.height, "leaks_contaminated": int((found["reject_reason"] == "contaminated").sum())}
    return {**leaks, "clusters": per.height, "clusters_complete": complete,
            "cluster_recall_pct": round(100 * complete / max(1, per.height), 4),
            "copies": copies, "copies_rejected": caught, "copy_recall_pct": round(100 * caught / max(1, copies), 4)}


# ---------------------------------------------------------------- the modes

def _measure(code: Path, bench: Path, stage: str, engine: str, size: int, round_: int, cluster, keep: Path | None,
             sets: list[str], inputs: Path, input_stages: tuple[str, ...]) -> dict:
    """One measurement of one stage on a fresh run folder; the folder goes unless kept."""
    name = f"{label_of(code)}-{stage}-{engine}-{size}-r{round_}"
    run_dir = fresh_run(bench, name, inputs, input_stages)
    figures = run_cli(code, bench, stage, run_dir, sets, skip=input_stages,
                      cluster=cluster if engine == "ray" else None, nice=NICE)
    figures.update(code=str(code), label=label_of(code), stage=stage, engine=engine, size=size, round=round_)
    if keep is not None:
        if keep.exists():
            shutil.rmtree(keep)
        shutil.move(str(run_dir.parent), str(keep))
        figures["kept_run"] = str(keep / "v1")
    else:
        shutil.rmtree(run_dir.parent)
    worker = figures["ray_rss_mb"].get("ray worker")
    print(f"round {round_ + 1} {label_of(code):5} {stage:6} {engine:5} {size:>9,}: {figures['wall_s']:8.1f} s "
          f"({figures.get('docs_per_s', 0):,.0f} docs/s), peak RSS {figures['rss_hwm_mb']:,.0f} MB "
          f"(wait4 {figures['wait4_maxrss_mb']:,.0f})" + (f", largest Ray worker {worker:,.0f} MB" if worker else "")
          + f", disk peak {figures['disk_peak_mb']:,.0f} MB", flush=True)
    return figures


def stages_mode(args) -> None:
    """Dedup and filter measurements for each code folder, engine and size; alternating code per round."""
    bench = Path(args.bench)
    codes = [Path(c).resolve() for c in args.code]
    engines = args.engines.split(",")
    results_path = Path(args.out)
    results = json.loads(results_path.read_text()) if results_path.is_file() and args.append else {"runs": []}
    results.setdefault("runs", [])

    def save() -> None:
        results["summary"] = summarize(results["runs"])
        results_path.write_text(json.dumps(results, indent=1))

    cluster_cm = contextlib.nullcontext(None)
    if "ray" in engines:
        sys.path.insert(0, str(ROOT))
        from tests.support.ray_cluster import RayCluster

        cluster_cm = RayCluster(nodes=1, cpus=args.cpus, dashboard=False)
    with cluster_cm as cluster:
        for round_ in range(args.rounds):
            order = codes if round_ % 2 == 0 else codes[::-1]
            for n in args.problems:
                for code in order:
                    inputs = pulled(code, bench, n) if not args.pulled_by else pulled(Path(args.pulled_by), bench, n)
                    for engine in engines:
                        if engine == "ray" and n not in args.ray_problems:
                            continue
                        keep = None
                        if args.keep_dedup and n == args.keep_size and round_ == 0 and engine == "local":
                            keep = Path(args.keep_dedup.replace("{label}", label_of(code)))
                        sets = stage_sets(bench / f"corpus-{n}", engine, cluster.address if engine == "ray" else None)
                        results["runs"].append(_measure(code, bench, "dedup", engine, n, round_, cluster, keep, sets,
                                                        inputs, ("pull",)))
                        save()
            for m in args.traces:
                for code in order:
                    inputs = filter_inputs(Path(args.pulled_by) if args.pulled_by else code, bench, m)
                    corpus = bench / f"corpus-{args.problems[0] if args.problems else 1_000_000}"
                    for engine in engines:
                        if engine == "ray" and m not in args.ray_traces:
                            continue
                        sets = stage_sets(corpus, engine, cluster.address if engine == "ray" else None)
                        results["runs"].append(_measure(code, bench, "filter", engine, m, round_, cluster, None, sets,
                                                        inputs, ("generate", "dedup")))
                        save()
    save()
    report(results["runs"])


def summarize(runs: list[dict]) -> list[dict]:
    """Median and spread per (code, stage, engine, size)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["label"], run["stage"], run["engine"], run["size"]), []).append(run)
    out = []
    for (label, stage, engine, size), items in sorted(groups.items()):
        walls = [r["wall_s"] for r in items]
        median = statistics.median(walls)
        workers = [r["ray_rss_mb"].get("ray worker", 0.0) for r in items]
        out.append({"label": label, "stage": stage, "engine": engine, "size": size, "rounds": len(items),
                    "wall_s_median": round(median, 2), "wall_s_min": min(walls), "wall_s_max": max(walls),
                    "docs_per_s": round(items[0].get("rows", size) / median, 1),
                    "rss_mb_max": max(r["rss_hwm_mb"] for r in items),
                    "wait4_maxrss_mb_max": max(r["wait4_maxrss_mb"] for r in items),
                    "ray_worker_mb_max": max(workers) if any(workers) else None,
                    "disk_peak_mb_max": max(r["disk_peak_mb"] for r in items),
                    "outputs": sorted({r.get("output_sha256", "")[:12] for r in items})})
    return out


def report(runs: list[dict]) -> None:
    """A short table of the medians to stdout."""
    print(f"{'code':6} {'stage':6} {'engine':6} {'size':>9} {'n':>2} {'wall s (min..max)':>22} {'docs/s':>9} "
          f"{'RSS MB':>8} {'worker MB':>9} {'disk MB':>8} output")
    for row in summarize(runs):
        worker = f"{row['ray_worker_mb_max']:,.0f}" if row["ray_worker_mb_max"] else "-"
        print(f"{row['label']:6} {row['stage']:6} {row['engine']:6} {row['size']:>9,} {row['rounds']:>2} "
              f"{row['wall_s_median']:>8.1f} ({row['wall_s_min']:.0f}..{row['wall_s_max']:.0f}) "
              f"{row['docs_per_s']:>9,.0f} {row['rss_mb_max']:>8,.0f} {worker:>9} {row['disk_peak_mb_max']:>8,.0f} "
              f"{','.join(row['outputs'])}")


def compare_mode(args) -> None:
    """Two finished dedup run folders on the same corpus: agreement, disagreements, planted recall."""
    found = compare(Path(args.a), Path(args.b), Path(args.planted) if args.planted else None)
    print(json.dumps(found, indent=1, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1, default=str))


def check_mode(args) -> None:
    """The independent corpus (GSM8K train with light edits) deduplicated by each code folder and engine."""
    sys.path.insert(0, str(Path(__file__).parent))
    import scale_corpus

    bench = Path(args.bench)
    corpus = bench / f"check-{args.rows}"
    meta = scale_corpus.check(corpus, DATA / "gsm8k" / "train.jsonl", rows=args.rows)
    print(f"check corpus: {meta}", flush=True)
    engines = args.engines.split(",")
    cluster_cm = contextlib.nullcontext(None)
    if "ray" in engines:
        sys.path.insert(0, str(ROOT))
        from tests.support.ray_cluster import RayCluster

        cluster_cm = RayCluster(nodes=1, cpus=args.cpus, dashboard=False)
    done: dict[str, Path] = {}
    runs = []
    with cluster_cm as cluster:
        for code in [Path(c).resolve() for c in args.code]:
            inputs = pulled(code, bench, args.rows, corpus=corpus, name=f"check-pulled-{label_of(code)}-{args.rows}")
            for engine in engines:
                sets = stage_sets(corpus, engine, cluster.address if engine == "ray" else None)
                keep = bench / "check-runs" / f"{label_of(code)}-{engine}"
                figures = _measure(code, bench, "dedup", engine, args.rows, 0, cluster, keep, sets, inputs, ("pull",))
                runs.append(figures)
                done[f"{label_of(code)}-{engine}"] = keep / "v1"
    names = list(done)
    if len(names) < 2:
        print("check: one code folder and engine measured; nothing to compare yet", flush=True)
    pairs = {f"{names[0]} vs {other}": compare(done[names[0]], done[other]) for other in names[1:]}
    for pair, found in pairs.items():
        print(f"{pair}: kept sets equal {found['kept_sets_equal']}, agreement {found['agreement_pct']}%, "
              f"{found['disagreements']} disagreements", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"corpus": meta, "runs": runs, "pairs": pairs}, indent=1, default=str))


def main(argv: list[str]) -> None:
    """Parse the mode (stages, compare, check) and run it."""
    import argparse

    parser = argparse.ArgumentParser(prog="scale.py", description="the dedup and filter stages through the CLI")
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("stages", "check"):
        mode = sub.add_parser(name)
        mode.add_argument("--code", action="append", required=True, help="code folder to measure (repeatable)")
        mode.add_argument("--bench", default="/work/bench", help="corpora, pulled folders and runs")
        mode.add_argument("--engines", default="local", help="comma-separated: local,ray")
        mode.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray node")
        mode.add_argument("--out", default=None, help="results JSON")
        mode.add_argument("--nice", type=int, default=0, help="niceness added to each measured stage process")
    stages = sub.choices["stages"]
    stages.add_argument("--problems", type=int, nargs="*", default=[1_000_000], help="dedup sizes (0 or more)")
    stages.add_argument("--traces", type=int, nargs="*", default=[200_000], help="filter sizes (0 or more)")
    stages.add_argument("--ray-problems", type=int, nargs="*", default=[1_000_000, 4_000_000],
                        help="dedup sizes also run on Ray (with --engines local,ray)")
    stages.add_argument("--ray-traces", type=int, nargs="*", default=[200_000, 800_000])
    stages.add_argument("--rounds", type=int, default=1)
    stages.add_argument("--pulled-by", default=None,
                        help="use the pulled and filter-input folders of this code folder for every code")
    stages.add_argument("--keep-dedup", default=None,
                        help="keep the first local dedup run at --keep-size here ({label} = code folder name)")
    stages.add_argument("--keep-size", type=int, default=1_000_000)
    stages.add_argument("--append", action="store_true", help="add to the runs already in --out")
    check = sub.choices["check"]
    check.add_argument("--rows", type=int, default=20_000)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("a", help="finished run folder (runs/<dataset>/v1)")
    cmp_.add_argument("b", help="finished run folder on the same corpus")
    cmp_.add_argument("--planted", default=None, help="corpus-<N>/planted.parquet: recall of the planted clusters")
    cmp_.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    global NICE
    NICE = getattr(args, "nice", 0)
    if args.mode == "stages" and args.out is None:
        args.out = str(Path(args.bench) / "results.json")
    {"stages": stages_mode, "compare": compare_mode, "check": check_mode}[args.mode](args)


if __name__ == "__main__" and sys.argv[1:2] == ["inputs"]:  # child: the measured code is on PYTHONPATH
    sys.path.insert(0, os.getcwd())
    write_filter_inputs(Path(sys.argv[2]), int(sys.argv[3]))
