"""One writer per dataset folder: a second writer fails at once naming the holder, a dead one's lock is taken over."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from curation import dedup, pull
from machinery import runlock
from machinery.config import DedupConfig, ProceduralSource, PullConfig
from tests.support.fake_openai import FakeOpenAI

HOLD = ("import sys, time; from pathlib import Path; from machinery import runlock\n"
        "with runlock.hold(Path(sys.argv[1]), 'stage test', flow_run_id='parent-run'):\n"
        "    print('held', flush=True); time.sleep(60)\n")


def _holding(run_dir) -> subprocess.Popen:
    """A child process that holds the lock of `run_dir` (as flow run 'parent-run') until killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_fails_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    run_dir = tmp_path / "runs" / "demo" / "v1"
    child = _holding(run_dir)
    try:
        with pytest.raises(runlock.RunLockedError) as raised, runlock.hold(tmp_path / "runs" / "demo" / "v2", "x"):
            pass
        message = str(raised.value)
        assert f"pid {child.pid} on " in message and "stage test, flow run parent-run, since 20" in message
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with caplog.at_level("WARNING"), runlock.hold(run_dir, "stage after") as me:
        assert me.pid == os.getpid() and me.what == "stage after"
    assert f"taking over the lock left by pid {child.pid}" in caplog.text and "its process is gone" in caplog.text
    assert (tmp_path / "runs" / "demo" / ".distillery.lock").read_text() == ""  # released cleanly


KILLED_MID_WRITE = (
    "import sys, time; from pathlib import Path; from machinery import runlock, store; from models import files\n"
    "run_dir = Path(sys.argv[1])\n"
    "with runlock.hold(run_dir, 'stage sft'), files.staged_folder(run_dir / 'sft' / 'model') as staging:\n"
    "    (staging / 'model.safetensors').write_bytes(b'half')\n"
    "    store._write_temp(run_dir / 'filter' / 'data.parquet', b'half')\n"
    "    print('writing', flush=True); time.sleep(60)\n")


def test_the_next_holder_removes_what_a_killed_writer_left_and_nothing_else(tmp_path, caplog):
    run_dir = tmp_path / "runs" / "demo" / "v1"
    bystanders = [run_dir / "filter" / "data.parquet", run_dir / "filter" / ".notes.tmp",
                  run_dir / "sft" / ".model.json.tmp", tmp_path / "runs" / "demo" / "v0" / "stats.json"]
    for path in bystanders:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept")
    (run_dir / "sft" / ".cache.abcd1234.d").mkdir()  # a folder of someone else's: not our name
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    leftovers = sorted(p.name for p in (tmp_path / "runs").rglob(".*")
                       if re.fullmatch(r"\.\w.*\.\w{8}(\.tmp)?", p.name))
    assert len(leftovers) == 2 and leftovers[0].startswith(".data.parquet.") and leftovers[1].startswith(".model.")
    with caplog.at_level("WARNING"), runlock.hold(run_dir, "stage sft"):
        pass
    assert "removed 2 temp file(s) and staging folder(s) that killed writers left" in caplog.text
    after = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert after == sorted(str(p.relative_to(tmp_path)) for p in [*bystanders, runlock.lock_path(run_dir)])
    assert (run_dir / "sft" / ".cache.abcd1234.d").is_dir() and not (run_dir / "sft" / "model").exists()
    caplog.clear()
    with caplog.at_level("WARNING"), runlock.hold(run_dir, "flow"), runlock.hold(run_dir, "stage"):
        pass
    assert "removed" not in caplog.text  # nothing left: nothing removed, nothing said


def test_the_lock_is_reentrant_in_a_process_and_inherited_by_a_handed_off_stage(tmp_path):
    run_dir = tmp_path / "ds" / "v1"
    with runlock.hold(run_dir, "flow"), runlock.hold(run_dir, "stage"):  # curate-and-train, then its stage
        assert runlock.holder(runlock.lock_path(run_dir)).what == "flow"
    child = _holding(run_dir)
    try:
        with runlock.hold(run_dir, "stage sft", inherit_from="parent-run") as under:
            assert under.pid == child.pid  # ran under the parent's hold
        with pytest.raises(runlock.RunLockedError):
            with runlock.hold(run_dir, "stage sft", inherit_from="another-run"):
                pass
    finally:
        child.kill()
        child.wait()


def test_wait_waits_for_the_holder_to_finish(tmp_path):
    run_dir = tmp_path / "ds" / "v1"
    child = _holding(run_dir)
    started = time.monotonic()
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(2); os.kill({child.pid}, 9)"])
    with runlock.hold(run_dir, "waiting stage", wait=True, poll_s=0.1) as me:
        assert me.what == "waiting stage" and time.monotonic() - started >= 1.5
    killer.wait()
    child.wait()


def test_two_cli_generates_on_one_run_folder(tmp_path):
    """The second `distillery generate` exits non-zero within 2 s naming the first; after a SIGKILL, a third runs."""
    run = tmp_path / "runs" / "demo" / "v1"
    pull.run(run, PullConfig(seed=3, sources=[ProceduralSource(task="basic_arithmetic", n=6)]))
    dedup.run(run, DedupConfig())
    with FakeOpenAI(latency_s=30) as server:  # the first generate is still waiting on its teacher
        argv = [sys.executable, "-m", "flows.cli", "generate", "--run", str(run), "--set", "teacher.backend=openai",
                "--set", f"teacher.base_url={server.base_url}", "--set", "teacher.model=fake", "--set", "teacher.n=1"]
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.requests == 0:  # it holds the lock before it sends anything
            assert time.monotonic() < deadline and first.poll() is None, "the first generate never asked"
            time.sleep(0.05)
        started = time.monotonic()
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and time.monotonic() - started < 2, time.monotonic() - started
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith("distillery generate: error: ") and f"being written by pid {first.pid}" in line
        assert "stage generate" in line
        first.send_signal(signal.SIGKILL)
        first.wait()
        server.latency_s = 0.0
        third = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock left by pid {first.pid}" in third.stderr


def test_a_run_in_the_home_folder_sweeps_only_its_own_leftovers(tmp_path, caplog):
    """`--run ~/v1`: the home folder is the dataset folder; other tools' hidden temp names there are not ours."""
    home = tmp_path / "home"
    run_dir = home / "v1"
    others = [home / ".bashrc.a1b2c3d4.tmp", home / ".cache" / "pip" / ".wheel.x9y8z7w6.tmp",
              home / "code" / ".notes.md.abcdefgh.tmp", home / "v0" / "pull" / ".data.parquet.abcdefgh.tmp",
              run_dir / "notes" / ".draft.abcdefgh.tmp", run_dir / ".other.yaml.abcdefgh.tmp"]
    other_folders = [home / ".mozilla.abcdefgh", home / "code" / ".venv.abcd1234", home / ".v1.abcdefgh"]
    ours = [run_dir / "pull" / ".data.parquet.abcdefgh.tmp", run_dir / ".config.yaml.abcdefgh.tmp",
            home / "dedup-index" / ".v1.parquet.abcdefgh.tmp", home / ".refresh.json.abcdefgh.tmp",
            run_dir / "sft" / "checkpoints" / ".state.abcdefgh.tmp"]
    our_folders = [run_dir / "sft" / ".model.abcdefgh", run_dir / ".cards.abcdefgh"]
    for path in [*others, *ours]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    for folder in [*other_folders, *our_folders]:
        (folder / "inside").mkdir(parents=True)
    with caplog.at_level("WARNING"), runlock.hold(run_dir, "stage pull"):
        pass
    assert all(path.is_file() for path in others) and all(folder.is_dir() for folder in other_folders)
    assert not [path for path in [*ours, *our_folders] if path.exists()]
    assert f"removed {len(ours) + len(our_folders)} temp file(s) and staging folder(s)" in caplog.text


# Imports first, then (as root) becomes nobody: a user who may read the lock file but not write it.
READ_ONLY_LOCK = (
    "import os, sys; from pathlib import Path; from machinery import runlock\n"
    "if os.geteuid() == 0:\n"
    "    os.setuid(65534)\n"
    "for call in (runlock.busy, lambda run: runlock.hold(run, 'stage pull').__enter__()):\n"
    "    try:\n"
    "        print('answered', call(Path(sys.argv[1])))\n"
    "    except runlock.LockFileError as error:\n"
    "        print('refused', error)\n")


def test_a_lock_file_that_cannot_be_opened_read_write_is_refused_naming_it():
    """NFS refuses an exclusive lock on a file opened read-only (EBADF): busy() and hold() open it read-write or say why."""
    shared = Path(tempfile.mkdtemp(prefix="runlock-", dir="/tmp"))  # pytest's own folders are private to this user
    try:
        shared.chmod(0o755)
        run_dir = shared / "ds" / "v1"
        with runlock.hold(run_dir, "stage pull"):
            pass
        path = runlock.lock_path(run_dir)
        path.parent.chmod(0o755)
        path.chmod(0o444)
        done = subprocess.run([sys.executable, "-c", READ_ONLY_LOCK, str(run_dir)], capture_output=True, text=True,
                              timeout=120, check=False)
    finally:
        shutil.rmtree(shared)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith(f"refused cannot open read-write the run lock {path} (") for line in lines), lines
    assert "file system " in lines[0]
