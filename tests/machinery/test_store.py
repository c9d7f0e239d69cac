"""The run store: atomic writes, manifests written last, skips only over complete outputs."""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from machinery import runlock, store
from models import files
from tests.support.kill import kill_at_line


def _result(n_kept: int = 3, n_rejected: int = 1) -> store.StageResult:
    kept = pl.DataFrame({"id": [str(i) for i in range(n_kept)]})
    rejected = pl.DataFrame({"id": ["r"] * n_rejected, "reject_reason": ["empty_text"] * n_rejected})
    stats = store.StageStats(rows_in=n_kept + n_rejected, kept=n_kept, rejected=n_rejected,
                             reasons=store.reason_counts(rejected))
    return store.StageResult(kept=kept, rejected=rejected, stats=stats)


def test_stage_writes_all_outputs_and_the_manifest_last(tmp_path):
    manifest = store.run_stage(tmp_path, "pull", config={"a": 1}, inputs={"x": "h"}, compute=_result)
    stage = tmp_path / "pull"
    assert {p.name for p in stage.iterdir()} == {"data.parquet", "rejected.parquet", "stats.json", "manifest.json"}
    assert manifest.counts == {"rows_in": 4, "kept": 3, "rejected": 1}
    assert json.loads((stage / "stats.json").read_text())["reasons"] == {"empty_text": 1}
    on_disk = store.Manifest.read(stage / "manifest.json")
    assert on_disk == manifest
    assert on_disk.outputs["data.parquet"] == store.file_hash(stage / "data.parquet")
    # the manifest is the newest file: it marks completion
    assert max(stage.iterdir(), key=lambda p: p.stat().st_mtime_ns).name == "manifest.json"


def test_same_key_is_skipped_and_a_new_config_recomputes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return _result()

    store.run_stage(tmp_path, "pull", config={"a": 1}, inputs={}, compute=compute)
    store.run_stage(tmp_path, "pull", config={"a": 1}, inputs={}, compute=compute)
    assert len(calls) == 1
    store.run_stage(tmp_path, "pull", config={"a": 2}, inputs={}, compute=compute)
    store.run_stage(tmp_path, "pull", config={"a": 2}, inputs={"file": "changed"}, compute=compute)
    assert len(calls) == 3


def test_missing_or_changed_output_is_recomputed_not_trusted(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return _result()

    store.run_stage(tmp_path, "pull", config={}, inputs={}, compute=compute)
    (tmp_path / "pull" / "data.parquet").unlink()
    store.run_stage(tmp_path, "pull", config={}, inputs={}, compute=compute)
    pl.DataFrame({"id": ["tampered"]}).write_parquet(tmp_path / "pull" / "data.parquet")
    store.run_stage(tmp_path, "pull", config={}, inputs={}, compute=compute)
    assert len(calls) == 3


def test_rows_that_do_not_add_up_fail_the_stage(tmp_path):
    def lossy():
        result = _result()
        result.stats.rows_in = 10  # six rows vanished without a reason
        return result

    with pytest.raises(RuntimeError, match="rows do not add up"):
        store.run_stage(tmp_path, "pull", config={}, inputs={}, compute=lossy)
    assert not (tmp_path / "pull" / "manifest.json").exists()


def test_downstream_reads_need_a_complete_stage(tmp_path):
    with pytest.raises(store.StageInputError, match="'pull'.*run it first"):
        store.finished(tmp_path, "pull").read()
    store.run_stage(tmp_path, "pull", config={}, inputs={}, compute=_result)
    assert store.finished(tmp_path, "pull").read().height == 3
    assert store.finished(tmp_path, "pull").hash() == store.file_hash(tmp_path / "pull" / "data.parquet")


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    store.atomic_write_bytes(target, b"old complete content")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_process_killed_mid_write_never_leaves_a_torn_parquet(tmp_path):
    """A writer in a loop is SIGKILLed at a random point; the file is always whole."""
    target = tmp_path / "data.parquet"
    script = textwrap.dedent(f"""
        import polars as pl, sys
        from pathlib import Path
        from machinery.store import write_parquet
        frame = pl.DataFrame({{"x": list(range(2_000_000))}})
        write_parquet(frame, Path({str(target)!r}))
        print("first", flush=True)
        i = 0
        while True:
            i += 1
            write_parquet(frame.with_columns(pl.col("x") + i), Path({str(target)!r}))
    """)
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "first"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        frame = pl.read_parquet(target)
        assert frame.height == 2_000_000
        assert (frame["x"].diff().drop_nulls() == 1).all()


def test_a_full_disk_fails_the_stage_naming_the_file_and_keeps_the_previous_output(tmp_path):
    """A write past RLIMIT_FSIZE (EFBIG, as ENOSPC would) leaves the last complete output and no temp files."""
    run = tmp_path / "runs" / "ds" / "v1"
    argv = [sys.executable, "-m", "flows.cli", "pull", "--run", str(run), "--set",
            "sources=[{kind: procedural, task: basic_arithmetic, n: 5}]"]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=120).returncode == 0
    before = store.finished(run, "pull")
    files = {p.name: p.read_bytes() for p in (run / "pull").iterdir()}

    def small_files() -> None:  # in the child: files may not grow past 64 KB
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    bigger = [*argv[:-1], "sources=[{kind: procedural, task: basic_arithmetic, n: 3000}]"]
    failed = subprocess.run(bigger, capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("distillery pull: error: [Errno 27] cannot write ") and "/pull/" in line
    assert "File too large" in line
    assert {p.name: p.read_bytes() for p in (run / "pull").iterdir()} == files  # untouched, no temp left
    assert store.finished(run, "pull").manifest == before.manifest


def test_outputs_get_the_mode_the_umask_gives_as_files_the_user_makes_do(tmp_path):
    """Not 0600/0700: in a shared run folder, whoever the umask lets read a run can read its outputs."""
    saved = os.umask(0o002)
    try:
        store.run_stage(tmp_path, "pull", config={}, inputs={}, compute=_result)
        with files.staged_folder(tmp_path / "sft" / "model") as staging:
            (staging / "config.json").write_text("{}")
        with files.staged_folder(tmp_path / "sft" / "model") as staging:  # a swap over an existing folder
            (staging / "config.json").write_text("{}")
        (tmp_path / "by-hand").write_text("a file the user makes")
    finally:
        os.umask(saved)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*(tmp_path / "pull").iterdir(), tmp_path / "by-hand"]}
    assert modes == {"data.parquet": 0o664, "rejected.parquet": 0o664, "stats.json": 0o664, "manifest.json": 0o664,
                     "by-hand": 0o664}
    assert stat.S_IMODE((tmp_path / "sft" / "model").stat().st_mode) == 0o775


def test_the_sweep_knows_every_stage_folder_and_the_dataset_folders_own_files():
    """The names the sweep may look into are the ones the stages, the dedup index and refresh write."""
    from curation.dedup_index import INDEX_DIR
    from flows import pipeline, stages

    assert store.STAGES == stages.STAGES and store.RUN_FILES == (stages.CONFIG_FILE,)
    assert store.DATASET_INDEX == INDEX_DIR
    assert all(f'dataset / "{name}"' in Path(pipeline.__file__).read_text() for name in store.DATASET_FILES)


# A writer swapping a model folder: `_calls` (tests/support/kill.py) kills it at one line of models/files.py.
SWAP = (
    "import sys; from pathlib import Path; from models import files\n"
    "target = Path(sys.argv[1])\n"
    "swap = files.exchange if sys.argv[2] == 'exchange' else (lambda a, b: False)\n"
    "_sys.settrace(_calls)\n"
    "with files.staged_folder(target, swap=swap) as staging:\n"
    "    (staging / 'model.safetensors').write_bytes(b'new weights')\n"
    "    (staging / 'config.json').write_bytes(b'new')\n")
OLD = {"model.safetensors": b"old weights", "config.json": b"old", "tokenizer.json": b"old"}
NEW = {"model.safetensors": b"new weights", "config.json": b"new"}


def _contents(folder: Path) -> dict[str, bytes] | None:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else None


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_folder_swap_killed_at_any_step_leaves_the_old_or_the_new_folder(tmp_path, swap):
    """SIGKILL between every two lines of the swap; the next lock holder finds one complete folder and no leftover.

    With RENAME_EXCHANGE the folder is whole at every instant; with two renames (file systems
    without it) a kill between them leaves it aside, and the next holder renames it back.
    """
    probe = [tmp_path / "a", tmp_path / "b"]
    for folder in probe:
        folder.mkdir()
    if swap == "exchange" and not files.exchange(*probe):
        pytest.skip(f"{tmp_path} has no renameat2(RENAME_EXCHANGE)")
    run_dir = tmp_path / "runs" / "ds" / "v1"
    target = run_dir / "sft" / "model"
    outcomes = []
    for line in itertools.count(1):
        shutil.rmtree(run_dir / "sft", ignore_errors=True)
        target.mkdir(parents=True)
        for name, payload in OLD.items():
            (target / name).write_bytes(payload)
        killed = kill_at_line(SWAP, [str(target), swap], Path(files.__file__), line)
        before = _contents(target)
        if swap == "exchange" or before is not None:
            assert before in (OLD, NEW), f"killed at line {line}: {before}"
        else:  # between the two renames: the old folder is aside, whole
            assert [_contents(p) for p in target.parent.glob(".model.*.old")] == [OLD], f"killed at line {line}"
        with runlock.hold(run_dir, "stage sft"):
            assert [p.name for p in target.parent.iterdir()] == ["model"], f"killed at line {line}: not cleaned up"
            assert _contents(target) in (OLD, NEW) and (before is None or _contents(target) == before)
        outcomes.append("new" if _contents(target) == NEW else "old")
        if not killed:
            break
    assert line > 10 and outcomes[0] == "old" and outcomes[-1] == "new"  # the kills spanned the whole swap
    assert outcomes == sorted(outcomes, key=["old", "new"].index)  # once new, never old again


def _parts(folder: Path, frame: pl.DataFrame, cuts: list[int]) -> store.Parts:
    """frame written as parquet parts cut at `cuts` (each part written as a shard task writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        path = folder / f"part-{i}.parquet"
        frame.slice(start, stop - start).write_parquet(path, compression="lz4")
        files.append(path)
    return store.Parts(files=tuple(files), height=frame.height)


def test_a_table_in_parts_is_streamed_into_the_same_bytes_however_it_was_cut(tmp_path):
    n = store.ROW_GROUP_ROWS * 2 + 123
    frame = pl.DataFrame({"id": [f"p{i}" for i in range(n)], "x": list(range(n)),
                          "meta": [None if i % 7 else {"k": i} for i in range(n)]})
    digests = set()
    for name, cuts in {"one": [0, n], "many": [0, 1, 5, store.ROW_GROUP_ROWS, store.ROW_GROUP_ROWS + 1, n - 3, n],
                       "with_empty": [0, 0, 1000, n]}.items():
        def compute(cuts=cuts, name=name) -> store.StageResult:
            stats = store.StageStats(rows_in=n, kept=n, rejected=0)
            return store.StageResult(kept=_parts(tmp_path / name, frame, cuts),
                                     rejected=_parts(tmp_path / f"{name}-rej", frame.clear(), [0, 0]), stats=stats)

        store.run_stage(tmp_path / name, "dedup", config={}, inputs={}, compute=compute)
        out = tmp_path / name / "dedup" / store.DATA
        assert pl.read_parquet(out).equals(frame)
        assert pl.read_parquet(tmp_path / name / "dedup" / store.REJECTED).schema == frame.schema
        digests.add(store.file_hash(out))
    assert len(digests) == 1


def test_parts_that_disagree_with_the_table_fail_naming_the_part_and_keep_no_output(tmp_path):
    frame = pl.DataFrame({"id": ["a", "b"]})
    good = _parts(tmp_path / "good", frame, [0, 2])
    odd = tmp_path / "odd.parquet"
    pl.DataFrame({"id": [1]}).write_parquet(odd)
    with pytest.raises(ValueError, match="odd.parquet"):
        store.run_stage(tmp_path, "dedup", config={}, inputs={},
                        compute=lambda: store.StageResult(
                            kept=store.Parts(files=(*good.files, odd), height=3), rejected=frame.clear(),
                            stats=store.StageStats(rows_in=3, kept=3, rejected=0)))
    with pytest.raises(ValueError, match="hold 2 rows, not the 5"):
        store.run_stage(tmp_path, "dedup", config={}, inputs={},
                        compute=lambda: store.StageResult(kept=store.Parts(files=good.files, height=5),
                                                          rejected=frame.clear(),
                                                          stats=store.StageStats(rows_in=5, kept=5, rejected=0)))
    assert not (tmp_path / "dedup" / store.MANIFEST).exists()
    assert not (tmp_path / "dedup" / store.DATA).exists()
    assert not [p for p in (tmp_path / "dedup").iterdir() if p.name.endswith(".tmp")]


def test_a_shard_reads_its_rows_of_an_input_without_the_rest(tmp_path):
    path = tmp_path / "in.parquet"
    pl.DataFrame({"id": [str(i) for i in range(1000)], "x": list(range(1000))}).write_parquet(path, row_group_size=100)
    assert store.row_count(path) == 1000
    rows = store.read_rows(path, 250, 260, ["x"])
    assert rows.columns == ["x"] and rows["x"].to_list() == list(range(250, 260))
    assert store.read_rows(path, 990, 1200)["x"].to_list() == list(range(990, 1000))
    assert store.read_rows(path, 5, 5).height == 0
