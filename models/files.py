"""Folders that appear whole or not at all, and content hashes, for model files."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

# renameat2(2) flags and the "current directory" file descriptor, from <linux/fs.h> and <fcntl.h>.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# What renameat2 answers where the kernel, the C library or the file system cannot exchange
# (NFS, for one): the swap then takes two renames instead.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}", str(b))


def _staging_folder(target: Path) -> Path:
    """A new empty hidden folder beside `target` (".<name>.XXXXXXXX"), with the mode the user's umask gives.

    Not `mkdtemp`, which makes 0700 folders: a model folder in a shared run folder must be
    readable by whoever the umask lets read it. The name is what `machinery.store`'s sweep
    recognises as a staging folder.
    """
    for _ in range(100):
        name = f".{target.name}.{''.join(secrets.choice('abcdefghijklmnopqrstuvwxyz0123456789_') for _ in range(8))}"
        try:
            os.mkdir(target.parent / name, 0o777)
        except FileExistsError:
            continue
        return target.parent / name
    raise FileExistsError(errno.EEXIST, f"no free staging name beside {target}", str(target))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a folder (or what a swap left under its name: a file or a link) if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def swap_in(staging: Path, target: Path, *, swap: Callable[[Path, Path], bool] = exchange) -> None:
    """Put the complete folder `staging` at `target`: readers see the old `target` or the new one, never neither.

    One atomic exchange where the file system has one; the old folder, now under the staging
    name, is then removed. Elsewhere (`swap` says False) the old folder is renamed aside to
    ".<name>.XXXXXXXX.old" and the new one renamed in: a process killed between the two leaves
    no `target` until the next holder of the run's lock renames the old one back
    (`machinery.store.remove_leftovers`).
    """
    if not os.path.lexists(target):
        os.rename(staging, target)
    elif swap(staging, target):
        _remove(staging)  # the old output, under the staging name since the exchange
    else:
        aside = staging.with_name(staging.name + ".old")
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        _remove(aside)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def staged_folder(target: Path, *, swap: Callable[[Path, Path], bool] = exchange) -> Iterator[Path]:
    """Yield an empty folder beside `target` that replaces `target` when the block succeeds.

    A process killed mid-write leaves only a hidden staging folder, never a half-written
    `target`, and a process killed mid-swap the old or the new complete `target` (see
    `swap_in`); an exception removes the staging folder and leaves `target` as it was. (The
    next holder of a run's lock removes what killed writers left: `machinery.store.sweep`.)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(target)
    try:
        yield staging
        swap_in(staging, target, swap=swap)
    except BaseException:
        _remove(staging)
        raise
