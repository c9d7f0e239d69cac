"""One writer per dataset folder: a file lock held for the whole of a stage, flow or refresh.

The lock is `runs/<dataset>/.distillery.lock`, taken with `fcntl.flock` (the kernel drops it
when its process dies, however it dies). Its content names the holder: host, pid, what it
runs, the Prefect flow run when there is one, and since when. It covers every version of a
dataset, because a refresh writes the next version and the shared dedup index while
another version may be in progress. Readers (`distillery card`, the UI) take no lock.

Re-entrant within a process: `curate-and-train` holds it, and each stage it runs takes it
again. A flow that hands a stage to another process (a TPU work pool) names itself as the
holder the child may inherit from.

Whoever takes the lock afresh is the folder's only writer, so it first removes the temp files
and staging folders that killed writers left in the run folder it writes (`store.sweep`).

Every path opens the lock file read-write: NFS carries a `flock` as a byte-range lock, and
refuses an exclusive one on a file opened read-only (EBADF). A lock file this user cannot
open read-write is refused, naming it (`LockFileError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from machinery import store

logger = logging.getLogger(__name__)

LOCK_FILE = ".distillery.lock"
_held: dict[Path, tuple[int, int]] = {}  # lock path -> (file descriptor, depth) held by this process
_registry = threading.Lock()


class RunLockedError(Exception):
    """Another process is writing the dataset folder; the message names it."""


class LockFileError(RunLockedError):
    """The lock file cannot be opened read-write, so no hold can be taken or tested; the message names it."""


@dataclass(frozen=True, kw_only=True)
class Holder:
    """Who holds a lock, as written in the lock file."""

    host: str
    pid: int
    what: str  # "stage generate", "flow curate-and-train", ...
    flow_run_id: str | None
    since: str
    folder: str

    def describe(self) -> str:
        """One line naming the holder."""
        run = f", flow run {self.flow_run_id}" if self.flow_run_id else ""
        return f"pid {self.pid} on {self.host} ({self.what}{run}, since {self.since})"


def lock_path(run_dir: Path) -> Path:
    """The lock file of the dataset folder that holds `run_dir` (runs/<dataset>/<version>)."""
    return run_dir.resolve().parent / LOCK_FILE


def holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file (the last one, if it died), or None when there is none."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(record: Holder) -> bool:
    """Whether the recorded process still runs (only knowable on its own host)."""
    if record.host != socket.gethostname():
        return True
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _filesystem(path: Path) -> str:
    """The type of the file system holding `path` ("nfs4", "ext4", ...), from /proc/self/mounts; "" if unknown."""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return ""
    target, found = str(path.resolve()), ("", "")
    for fields in mounts:
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(found[0]):
            found = (point, fields[2])
    return found[1]


def _refused(path: Path, doing: str, error: OSError) -> LockFileError:
    """The error for a lock file this user or its file system cannot lock, naming both."""
    kind = _filesystem(path.parent) or "unknown"
    return LockFileError(f"cannot {doing} the run lock {path} ({error.strerror or error}; file system {kind}): "
                         f"the lock needs a lock file this user may write, on a file system with flock "
                         f"(on NFS: v4, or v3 with a lock daemon)")


def _open(path: Path, *, create: bool) -> int:
    """The lock file opened read-write, as NFS needs for an exclusive lock; LockFileError naming it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o666)
    except FileNotFoundError:
        raise  # busy(): no lock file, no holder
    except OSError as error:
        raise _refused(path, "open read-write", error) from error


def _try_lock(fd: int, path: Path) -> bool:
    """Take the exclusive lock without waiting: False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # EBADF, ENOLCK, EOPNOTSUPP: a file system that cannot lock
        raise _refused(path, "lock", error) from error
    return True


def busy(run_dir: Path) -> bool:
    """Whether a live process holds the dataset folder's lock right now (no waiting, nothing taken)."""
    path = lock_path(run_dir)
    try:
        fd = _open(path, create=False)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd, path)
    finally:
        os.close(fd)  # closing drops a lock taken just now


@contextlib.contextmanager
def hold(run_dir: Path, what: str, *, flow_run_id: str | None = None, wait: bool = False, poll_s: float = 1.0,
         inherit_from: str | None = None) -> Iterator[Holder | None]:
    """Hold the dataset folder's lock for the block; RunLockedError naming the holder unless `wait`.

    `inherit_from`: a flow run id; when that flow run holds the lock (a parent that handed this
    stage to another process), the block runs under its lock.
    """
    path = lock_path(run_dir)
    with _registry:
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield holder(path)
        finally:
            _release(path)
        return
    fd = _acquire(path, what, flow_run_id=flow_run_id, wait=wait, poll_s=poll_s, inherit_from=inherit_from)
    if fd is None:  # inherited: the parent flow run holds it
        yield holder(path)
        return
    with _registry:
        _held[path] = (fd, 1)
    try:
        if removed := store.sweep(run_dir):
            logger.warning("%s: removed %d temp file(s) and staging folder(s) that killed writers left: %s",
                           path.parent, len(removed), ", ".join(str(p.relative_to(path.parent)) for p in removed[:5]))
        yield holder(path)
    finally:
        _release(path)


def _acquire(path: Path, what: str, *, flow_run_id: str | None, wait: bool, poll_s: float,
             inherit_from: str | None) -> int | None:
    """Take the flock and record ourselves; None when the lock is inherited from `inherit_from`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open(path, create=True)
    waited = False
    while True:
        try:
            locked = _try_lock(fd, path)
        except LockFileError:
            os.close(fd)
            raise
        if locked:
            break
        current = holder(path)
        if inherit_from and current is not None and current.flow_run_id == inherit_from:
            os.close(fd)
            logger.info("%s: running under the lock of flow run %s", path.parent, inherit_from)
            return None
        shown = current.describe() if current else "another process"
        if not wait:
            os.close(fd)
            raise RunLockedError(f"{path.parent} is being written by {shown}; wait for it to finish "
                                 f"(or pass --wait), or stop it") from None
        if not waited:
            logger.info("%s is being written by %s; waiting for it to finish", path.parent, shown)
            waited = True
        time.sleep(poll_s)
    previous = holder(path)
    if previous is not None:  # a clean release empties the file: what is left was a dead process's
        state = "its process is gone" if not _alive(previous) else "it no longer holds it"
        logger.warning("%s: taking over the lock left by %s (%s)", path.parent, previous.describe(), state)
    me = Holder(host=socket.gethostname(), pid=os.getpid(), what=what, flow_run_id=flow_run_id,
                since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), folder=str(path.parent))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
    os.fsync(fd)
    return fd


def _release(path: Path) -> None:
    """Drop one level of this process's hold; the last one empties the file and unlocks it."""
    with _registry:
        fd, depth = _held[path]
        if depth > 1:
            _held[path] = (fd, depth - 1)
            return
        del _held[path]
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
