"""Folders that appear whole or not at all, and content hashes, for model files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def staged_folder(target: Path, *, sole_writer: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `target` that replaces `target` when the block succeeds.

    A process killed mid-write leaves only a hidden staging folder, never a half-written
    `target`; an exception removes the staging folder and leaves `target` as it was. With
    `sole_writer` (the caller holds the only right to write `target`, as a run's lock gives),
    staging folders that killed writers left beside it are removed first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if sole_writer:
        staged = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}")  # mkdtemp's names, below
        for stale in target.parent.iterdir():
            if staged.fullmatch(stale.name) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
