"""The run directory: atomic stage outputs, and manifests that let a finished stage be skipped.

Layout: `runs/<dataset>/<version>/<stage>/` holds `data.parquet`, `rejected.parquet`,
`stats.json` and `manifest.json`. The manifest is written last, so its presence marks a
complete output; its `key` hashes the stage config and the hashes of the stage's inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from machinery import redact

logger = logging.getLogger(__name__)

DATA = "data.parquet"
REJECTED = "rejected.parquet"
STATS = "stats.json"
MANIFEST = "manifest.json"
# Rows per row group of a table streamed from parts: fixed, so the file's bytes depend on its rows
# alone, not on how a stage cut them into shards or which engine ran them.
ROW_GROUP_ROWS = 16_384


class WriteError(OSError):
    """A stage output could not be written (disk full, file too large); the message names the file."""


# Temp files and staging folders are ".<name>." + 8 random characters (+ ".tmp" for a file):
# what the sweep below recognises, and `models.files.staged_folder` names its folders the same way.
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _hidden_name(name: str, suffix: str = "") -> str:
    """A fresh hidden sibling name for `name`: ".<name>.XXXXXXXX<suffix>"."""
    return f".{name}.{''.join(secrets.choice(_NAME_CHARS) for _ in range(8))}{suffix}"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new hidden temp file beside `path`, with the mode a file the user creates gets.

    Not `mkstemp`: it makes every file 0600, and a stage output must be readable by whoever
    the user's umask lets read it (a shared run folder).
    """
    for _ in range(100):
        tmp = path.with_name(_hidden_name(path.name, ".tmp"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temp name beside {path}", str(path))


def _write_temp(path: Path, payload: bytes | Parts) -> Path:
    """Write payload to a hidden temp file beside `path`, flushed to disk; WriteError naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(payload, Parts):
                stream_parts(payload, handle)
            else:
                handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


# A leftover: a temp file (".tmp"), a staging folder (no suffix), or a folder that a swap without
# RENAME_EXCHANGE moved aside (".old") before renaming the new one in.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<kind>\.tmp|\.old)?")

# The run folder's own stage folders and files, and the dataset folder's own: all that a sweep
# looks into. They are `flows.stages.STAGES`, the run's config file, `curation.dedup_index.INDEX_DIR`
# and the refresh flow's attempts file (tests/machinery/test_store.py holds them equal).
STAGES = ("pull", "dedup", "generate", "filter", "build", "cards", "sft", "grpo", "eval")
RUN_FILES = ("config.yaml",)
DATASET_INDEX = "dedup-index"
DATASET_FILES = ("refresh.json",)


def remove_leftovers(folder: Path, *, recursive: bool = True, names: tuple[str, ...] | None = None) -> list[Path]:
    """Remove the temp files and staging folders that killed writers left in `folder`; what was removed.

    `recursive`: also in its subfolders (never through a symlink); `names`: only the leftovers
    of these file names. A folder moved aside by an interrupted swap comes back when nothing
    took its place. Only for a caller that is the folder's sole writer (the run lock's holder):
    a live writer's temp file looks the same.
    """
    if not folder.is_dir() or (recursive and folder.is_symlink()):  # never walk into another tree
        return []
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = []
    for path in sorted(found):
        match = _LEFTOVER.fullmatch(path.name)
        if match is None or (names is not None and match["name"] not in names) or path.is_symlink():
            continue
        if not path.exists():  # gone with a staging folder removed before it
            continue
        if match["kind"] == ".tmp" and path.is_file():
            path.unlink(missing_ok=True)
        elif match["kind"] == ".old" and path.is_dir() and not (original := path.with_name(match["name"])).exists():
            os.rename(path, original)  # the swap was killed between its two renames: the old output returns
            logger.warning("%s: restored from %s, which an interrupted swap had moved aside", original, path.name)
            continue
        elif match["kind"] != ".tmp" and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(path)
    return removed


def sweep(run_dir: Path) -> list[Path]:
    """Remove what killed writers left in a run folder (for the holder of its dataset's lock); what was removed.

    Only the leftovers of the run folder's own files and stage folders (`RUN_FILES`, `STAGES`),
    what lies in its stage folders, and its dataset folder's own index folder and files: never
    anything else of the parent folders (`--run ~/v1` makes the home folder the dataset folder).
    """
    run_dir = run_dir.resolve()
    removed = remove_leftovers(run_dir, recursive=False, names=(*RUN_FILES, *STAGES))
    for stage in STAGES:
        removed += remove_leftovers(run_dir / stage)
    removed += remove_leftovers(run_dir.parent / DATASET_INDEX)
    removed += remove_leftovers(run_dir.parent, recursive=False, names=DATASET_FILES)
    return removed


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write a file so that readers see the old complete file or the new one, never a torn one."""
    tmp = _write_temp(path, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_all(files: dict[Path, bytes | Parts], *, before_replace: Callable[[], None] | None = None) -> None:
    """Write several files so that either all are replaced or none is (a full disk leaves the old ones).

    Every payload (bytes, or a table's parts streamed into one parquet file) is written to a
    temp file first; only when all are on disk does `before_replace` run and are they renamed
    into place (a rename needs no space).
    """
    temps: dict[Path, Path] = {}
    try:
        for path, payload in files.items():
            temps[path] = _write_temp(path, payload)
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    if before_replace is not None:
        before_replace()
    for path, tmp in temps.items():
        os.replace(tmp, path)
    for folder in {path.parent for path in files}:
        _fsync_dir(folder)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """A frame as parquet bytes that depend only on the frame."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    return buffer.getvalue()


@dataclass(frozen=True, kw_only=True)
class Parts:
    """A table too big for one process's memory: parquet files holding its rows in order.

    A stage returns its kept or rejected rows this way when its tasks wrote them shard by
    shard; `run_stage` streams the parts into the one output file without gathering them.
    """

    files: tuple[Path, ...]
    height: int

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("Parts needs at least one file (an empty one carries the schema)")


def stream_parts(parts: Parts, handle: BinaryIO) -> None:
    """Write parts as one parquet file, row groups of exactly ROW_GROUP_ROWS rows (the last one shorter).

    Memory: about one row group at a time. Every part must have the first one's schema, and
    together they must hold `parts.height` rows; a ValueError names what differs.
    """
    schema = pq.read_schema(parts.files[0])
    written = 0
    with pq.ParquetWriter(handle, schema, compression="zstd", write_statistics=True) as writer:

        def flush(table: pa.Table) -> None:
            nonlocal written
            # One contiguous chunk: pages then depend on the rows alone, not on how the parts cut them.
            writer.write_table(table.combine_chunks(), row_group_size=ROW_GROUP_ROWS)
            written += table.num_rows

        pending = pa.Table.from_batches([], schema=schema)
        for file in parts.files:
            source = pq.ParquetFile(file)
            if not source.schema_arrow.equals(schema):
                raise ValueError(f"{file}: schema {source.schema_arrow} differs from the first part's "
                                 f"({parts.files[0]}: {schema})")
            for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS):
                pending = pa.concat_tables([pending, pa.Table.from_batches([batch], schema=schema)])
                while pending.num_rows >= ROW_GROUP_ROWS:
                    flush(pending.slice(0, ROW_GROUP_ROWS))
                    pending = pending.slice(ROW_GROUP_ROWS)
        if pending.num_rows:
            flush(pending)
    if written != parts.height:
        raise ValueError(f"parts {parts.files[0]}..{parts.files[-1]} hold {written} rows, not the {parts.height} "
                         f"the stage counted")


def read_rows(path: Path, start: int, stop: int, columns: list[str] | None = None) -> pl.DataFrame:
    """Rows [start, stop) of a parquet file, reading only the row groups that hold them."""
    frame = pl.scan_parquet(path)
    if columns is not None:
        frame = frame.select(columns)
    return frame.slice(start, max(0, stop - start)).collect()


def row_count(path: Path) -> int:
    """Rows of a parquet file, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


def json_bytes(payload: Any) -> bytes:
    """JSON with sorted keys, so equal content gives equal bytes."""
    return (json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write a frame as parquet atomically."""
    atomic_write_bytes(path, parquet_bytes(frame))


def write_json(payload: Any, path: Path) -> None:
    """Write JSON atomically, keys sorted so equal content gives equal bytes."""
    atomic_write_bytes(path, json_bytes(payload))


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_hash(path: Path) -> str:
    """Content hash of a file, or of every file under a folder ("missing" when absent)."""
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{file_hash(file)}\n".encode())
        return digest.hexdigest()
    return file_hash(path) if path.is_file() else "missing"


def stage_key(config: Any, inputs: dict[str, str]) -> str:
    """The identity of a stage's output: a hash of its config and its inputs' hashes."""
    canonical = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit it runs from (with `+dirty` for local edits)."""
    from importlib import metadata

    try:
        version = metadata.version("distillery")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}{'.dirty' if dirty else ''}"


@dataclass(kw_only=True)
class StageStats:
    """What every stage reports: rows in, kept, rejected per reason, and its wall time."""

    rows_in: int
    kept: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """One stage's output before it is written: kept rows, rejected rows, stats."""

    kept: pl.DataFrame | Parts
    rejected: pl.DataFrame | Parts
    stats: StageStats
    extra: dict[str, pl.DataFrame | Parts] = field(default_factory=dict)  # more tables: <name>.parquet


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The record of a complete stage output; written last, read to decide a skip."""

    stage: str
    key: str
    config: Any
    inputs: dict[str, str]
    outputs: dict[str, str]
    counts: dict[str, int]
    code_version: str
    started_at: str
    seconds: float

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at path, or None when absent or unreadable (an incomplete stage)."""
        try:
            payload = json.loads(path.read_text())
            return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls)})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def reason_counts(rejected: pl.DataFrame) -> dict[str, int]:
    """Rejected rows per reason, sorted by reason name."""
    if rejected.is_empty():
        return {}
    counts = rejected.group_by("reject_reason").len().sort("reject_reason")
    return {row["reject_reason"]: row["len"] for row in counts.iter_rows(named=True)}


class StageInputError(Exception):
    """A stage's input is missing or incomplete: run the stage that makes it first."""


def complete_manifest(stage_dir: Path, key: str | None = None) -> Manifest | None:
    """The stage's manifest if its outputs are all present and unchanged (and its key matches)."""
    manifest = Manifest.read(stage_dir / MANIFEST)
    if manifest is None or (key is not None and manifest.key != key):
        return None
    for name, digest in manifest.outputs.items():
        path = stage_dir / name
        if not path.is_file() or file_hash(path) != digest:
            logger.warning("%s: output %s is missing or changed since its manifest; recomputing", stage_dir, name)
            return None
    return manifest


@dataclass(frozen=True, kw_only=True)
class Finished:
    """A finished stage as a later stage reads it: outputs checked against its manifest once.

    Every stage reads its inputs through this (`store.finished`), so every stage checks them
    the same way and keys itself on the hashes the manifest recorded.
    """

    folder: Path
    manifest: Manifest

    def _name(self, name: str) -> str:
        if name not in self.manifest.outputs:
            raise StageInputError(f"{self.folder}: stage {self.manifest.stage!r} has no output {name!r} "
                                  f"(it wrote {', '.join(sorted(self.manifest.outputs))}); re-run it")
        return name

    def path(self, name: str = DATA) -> Path:
        """Where one of the stage's outputs lies."""
        return self.folder / self._name(name)

    def hash(self, name: str = DATA) -> str:
        """The sha256 the manifest recorded for one output: what a downstream stage keys on."""
        return self.manifest.outputs[self._name(name)]

    def read(self, name: str = DATA) -> pl.DataFrame:
        """One of the stage's parquet outputs (its kept rows by default)."""
        return pl.read_parquet(self.path(name))

    def row_count(self, name: str = DATA) -> int:
        """Rows of one of the stage's parquet outputs, without reading them."""
        return row_count(self.path(name))


def finished(run_dir: Path, stage: str) -> Finished:
    """The complete output of `stage` in `run_dir`; StageInputError, naming it, when there is none."""
    manifest = complete_manifest(run_dir / stage)
    if manifest is None:
        raise StageInputError(f"stage {stage!r} has no complete output in {run_dir / stage}; run it first")
    return Finished(folder=run_dir / stage, manifest=manifest)


def run_stage(
    run_dir: Path,
    stage: str,
    *,
    config: Any,
    inputs: dict[str, str],
    compute: Callable[[], StageResult],
    force: bool = False,
    outputs: tuple[str, ...] = (),
) -> Manifest:
    """Run a stage unless a complete output with the same key exists; write it atomically.

    `outputs`: more files (paths relative to the stage folder) that compute writes itself,
    e.g. a model adapter; they are hashed into the manifest like the tables.
    """
    stage_dir = run_dir / stage
    key = stage_key(config, inputs)
    existing = None if force else complete_manifest(stage_dir, key)
    if existing is not None:
        logger.info("%s: skipped, complete output with key %s already in %s", stage, key[:12], stage_dir)
        return existing
    started = time.time()
    result = compute()
    stats = result.stats
    # Never drop silently: every input row is kept or rejected with a reason.
    if stats.kept + stats.rejected != stats.rows_in or stats.kept != result.kept.height \
            or stats.rejected != result.rejected.height:
        raise RuntimeError(f"{stage}: rows do not add up: in={stats.rows_in} kept={stats.kept}/"
                           f"{result.kept.height} rejected={stats.rejected}/{result.rejected.height}")
    tables = {DATA: _table_payload(result.kept), REJECTED: _table_payload(result.rejected),
              STATS: json_bytes(dataclasses.asdict(stats)),
              **{f"{name}.parquet": _table_payload(frame) for name, frame in result.extra.items()}}
    # All or nothing: on a full disk the previous complete output (and its manifest) stays as it was;
    # once every table is on disk the manifest goes (incomplete) until the new one lands.
    write_all({stage_dir / name: payload for name, payload in tables.items()},
              before_replace=lambda: (stage_dir / MANIFEST).unlink(missing_ok=True))
    extra = [name for name in tables if name not in (DATA, REJECTED, STATS)]
    counts = {"rows_in": stats.rows_in, "kept": stats.kept, "rejected": stats.rejected}
    manifest = finish_stage(stage_dir, stage=stage, key=key, config=config, inputs=inputs,
                            outputs=[DATA, REJECTED, STATS, *extra, *outputs], counts=counts, started=started)
    logger.info("%s: kept %d, rejected %d of %d in %.1f s -> %s", stage, stats.kept, stats.rejected,
                stats.rows_in, manifest.seconds, stage_dir)
    return manifest


def _table_payload(table: pl.DataFrame | Parts) -> bytes | Parts:
    """What `write_all` writes for a stage table: a frame's bytes, or parts to stream."""
    return table if isinstance(table, Parts) else parquet_bytes(table)


def finish_stage(stage_dir: Path, *, stage: str, key: str, config: Any, inputs: dict[str, str], outputs: list[str],
                 counts: dict[str, int], started: float) -> Manifest:
    """Write the manifest that marks a stage complete: last, after all its outputs."""
    manifest = Manifest(
        stage=stage,
        key=key,
        config=redact.value(config),  # a URL's credentials never reach a manifest (machinery.redact)
        inputs=inputs,
        outputs={name: file_hash(stage_dir / name) for name in outputs},
        counts=counts,
        code_version=code_version(),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        seconds=round(time.time() - started, 3),
    )
    write_json(dataclasses.asdict(manifest), stage_dir / MANIFEST)
    return manifest
