"""A stage's work cut into shards, each kept on disk when it finishes, so a killed run redoes only the rest.

Layout: `<stage>/shards/<key16>/<label>.<table>.parquet` for every table a shard produced,
then `<label>.done.json` with its counts, written last: a shard is finished when its marker
exists (datatrove's completion files). `<key16>` starts the stage key, so shards made under
another config or other inputs are never reused. A stage removes its `shards/` folder once
its manifest is written. On Ray the tasks write their shards themselves, so the run folder
must be storage that every node sees; the driver then reads only what it needs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from machinery import store
from machinery.execution import ExecutionError, Executor, LocalExecutor

logger = logging.getLogger(__name__)

FOLDER = "shards"
RECORD = "execution.json"
DEFAULT_SHARD_ROWS = 50_000  # as ExecutionConfig.shard_rows


@dataclass(frozen=True, kw_only=True)
class ShardOutput:
    """What one shard produced: tables (row-aligned with its input or not) and counts to add up."""

    tables: dict[str, pl.DataFrame]
    counts: dict[str, Any] = field(default_factory=dict)


class Shards(Protocol):
    """Where finished shards are kept."""

    worker_writable: bool  # tasks in other processes and on other machines can write here

    def done(self, label: str) -> bool:
        """Whether the shard is finished."""

    def write(self, label: str, output: ShardOutput) -> None:
        """Keep a finished shard (its marker last)."""

    def counts(self, label: str) -> dict[str, Any]:
        """The counts of a finished shard."""

    def table(self, label: str, name: str, columns: list[str] | None = None) -> pl.DataFrame:
        """One table of a finished shard (only `columns` when given)."""

    def path(self, label: str, name: str) -> Path:
        """Where one table of a finished shard lies (shards on disk only)."""


class FolderShards:
    """Finished shards as parquet files and JSON markers under `<stage>/shards/<key16>/`."""

    worker_writable = True

    def __init__(self, stage_dir: Path, key: str):
        self.root = stage_dir / FOLDER
        self.folder = self.root / key[:16]

    def _marker(self, label: str) -> Path:
        return self.folder / f"{label}.done.json"

    def done(self, label: str) -> bool:
        return self._marker(label).is_file()

    def write(self, label: str, output: ShardOutput) -> None:
        for name, frame in output.tables.items():
            buffer = io.BytesIO()
            # lz4: shard files are read once and deleted; zstd would cost a second on 500 MB of signatures
            frame.write_parquet(buffer, compression="lz4", statistics=False, row_group_size=store.ROW_GROUP_ROWS)
            store.atomic_write_bytes(self.folder / f"{label}.{name}.parquet", buffer.getvalue())
        store.write_json({"tables": sorted(output.tables), "counts": output.counts}, self._marker(label))

    def counts(self, label: str) -> dict[str, Any]:
        return json.loads(self._marker(label).read_text())["counts"]

    def path(self, label: str, name: str) -> Path:
        return self.folder / f"{label}.{name}.parquet"

    def table(self, label: str, name: str, columns: list[str] | None = None) -> pl.DataFrame:
        path = self.path(label, name)
        try:
            return pl.read_parquet(path, columns=columns)
        except OSError as error:
            raise store.StageInputError(f"{path}: shard table missing or unreadable ({error}); its marker says it "
                                        f"was written: delete {self._marker(label)} to redo the shard") from error

    def start(self, *, force: bool) -> None:
        """Drop shards of other keys (another config or input), and this key's too when forced."""
        if self.root.is_dir():
            for other in self.root.iterdir():
                if other != self.folder or force:
                    shutil.rmtree(other, ignore_errors=True)

    def remove(self) -> None:
        """Delete every shard of the stage: its manifest now stands for them."""
        shutil.rmtree(self.root, ignore_errors=True)

    def prune(self) -> None:
        """After a failure: keep finished shards for the next run, but no folder that holds none."""
        for folder in (self.folder, self.root):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


class MemoryShards:
    """Finished shards in a dict: for a stage function called on frames, without a run folder."""

    worker_writable = False

    def __init__(self) -> None:
        self._outputs: dict[str, ShardOutput] = {}

    def done(self, label: str) -> bool:
        return label in self._outputs

    def write(self, label: str, output: ShardOutput) -> None:
        self._outputs[label] = output

    def counts(self, label: str) -> dict[str, Any]:
        return self._outputs[label].counts

    def table(self, label: str, name: str, columns: list[str] | None = None) -> pl.DataFrame:
        frame = self._outputs[label].tables[name]
        return frame.select(columns) if columns is not None else frame

    def path(self, label: str, name: str) -> Path:
        raise ExecutionError(f"shard {label}: shards kept in memory have no files; use shards.scratch_plan()")


@dataclass(kw_only=True)
class Report:
    """Which shards of a piece of work this run computed and which it found finished."""

    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def row_ranges(n: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive shards of at most `shard_rows` rows (one empty shard for no rows)."""
    return [(start, min(start + shard_rows, n)) for start in range(0, n, shard_rows)] or [(0, 0)]


def rows_label(work: str, start: int, stop: int) -> str:
    """A row shard's name: the rows are in it, so a changed `shard_rows` never reuses a stale shard."""
    return f"{work}-{start:010d}-{stop:010d}"


def _compute(fn: Callable[..., ShardOutput], shards: Shards, item: tuple[str, Any], **shared: Any) -> str:
    """Where the work runs: compute one shard and keep it."""
    label, arg = item
    shards.write(label, fn(arg, **shared))
    return label


def run(executor: Executor, shards: Shards, fn: Callable[..., ShardOutput], items: Sequence[tuple[str, Any]], *,
        name: str, shared: dict[str, Any] | None = None, report: dict[str, Report] | None = None) -> list[str]:
    """Compute every unfinished shard `(label, arg)` as `fn(arg, **shared)`; the labels, in order.

    `report`, when given, records under `name` which shards were computed and which reused.
    """
    if not executor.in_process and not shards.worker_writable:
        raise ExecutionError(f"{name}: the {executor.name} engine needs shards on disk (a run folder), "
                             f"not in memory")
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name}: shard labels must be unique, got {labels}")
    pending = [(label, arg) for label, arg in items if not shards.done(label)]
    done = Report(reused=[label for label in labels if shards.done(label)])
    if done.reused:
        logger.info("%s: %d of %d shards already finished; computing %d", name, len(done.reused), len(labels),
                    len(pending))
    for _, label in executor.map(functools.partial(_compute, fn, shards), pending, name=name, shared=shared):
        done.computed.append(label)
    if report is not None:
        report[name] = done
    return labels


def write_record(stage_dir: Path, executor: Executor, shard_rows: int, report: dict[str, Report]) -> None:
    """`<stage>/execution.json`: the engine and which shards this run computed or reused.

    Not a stage output (the manifest does not hash it): it says how the output was made, not what it is.
    """
    store.write_json({"engine": executor.name, "shard_rows": shard_rows,
                      "work": {name: {"computed": sorted(r.computed), "reused": sorted(r.reused)}
                               for name, r in sorted(report.items())}},
                     stage_dir / RECORD)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How a stage's work is cut and where it runs: the executor, where shards are kept, rows per shard."""

    executor: Executor
    shards: Shards
    shard_rows: int = DEFAULT_SHARD_ROWS
    report: dict[str, Report] = field(default_factory=dict)

    def run(self, fn: Callable[..., ShardOutput], items: Sequence[tuple[str, Any]], *, name: str,
            shared: dict[str, Any] | None = None) -> list[str]:
        """Compute the unfinished shards (see `run`); the labels, in order."""
        return run(self.executor, self.shards, fn, items, name=name, shared=shared, report=self.report)

    def rows(self, work: str, n: int) -> list[tuple[str, tuple[int, int]]]:
        """(label, (start, stop)) of the row shards of n rows."""
        return [(rows_label(work, start, stop), (start, stop)) for start, stop in row_ranges(n, self.shard_rows)]

    def concat(self, labels: Sequence[str], name: str, columns: list[str] | None = None) -> pl.DataFrame:
        """One table of every shard, stacked in shard order."""
        return pl.concat([self.shards.table(label, name, columns) for label in labels], how="vertical")

    def path(self, label: str, name: str) -> Path:
        """Where one table of a finished shard lies."""
        return self.shards.path(label, name)

    @property
    def folder(self) -> Path:
        """The folder of this stage key's shards, for a phase's own files (partitions, arrays).

        Deleted with the shards once the manifest is written; kept after a failure, for the next run.
        """
        if not isinstance(self.shards, FolderShards):
            raise ExecutionError("this plan keeps its shards in memory; use shards.scratch_plan()")
        self.shards.folder.mkdir(parents=True, exist_ok=True)
        return self.shards.folder


def in_memory(shard_rows: int = DEFAULT_SHARD_ROWS) -> Plan:
    """This process, shards in memory: what a stage function uses when called on frames alone."""
    return Plan(executor=LocalExecutor(), shards=MemoryShards(), shard_rows=shard_rows)


@contextlib.contextmanager
def scratch_plan(shard_rows: int = DEFAULT_SHARD_ROWS, executor: Executor | None = None) -> Iterator[Plan]:
    """A plan with its shards in a temporary folder, removed on exit: a file-based stage called on frames."""
    with tempfile.TemporaryDirectory(prefix="distillery-shards-") as folder:
        yield Plan(executor=executor or LocalExecutor(), shards=FolderShards(Path(folder), "0" * 16),
                   shard_rows=shard_rows)


def run_stage(run_dir: Path, stage: str, *, config: Any, inputs: dict[str, str],
              compute: Callable[[Plan], store.StageResult], executor: Executor | None = None,
              shard_rows: int = DEFAULT_SHARD_ROWS, force: bool = False) -> store.Manifest:
    """`store.run_stage` for a stage whose work is sharded: shards kept under its folder until the manifest.

    A killed run's finished shards (same stage key) are reused by the next; once the manifest
    is written, `execution.json` records what this run computed and the shards are deleted.
    """
    stage_dir = run_dir / stage
    folder = FolderShards(stage_dir, store.stage_key(config, inputs))
    plan = Plan(executor=executor or LocalExecutor(), shards=folder, shard_rows=shard_rows)
    ran = []

    def sharded() -> store.StageResult:
        folder.start(force=force)
        ran.append(True)
        return compute(plan)

    try:
        manifest = store.run_stage(run_dir, stage, config=config, inputs=inputs, compute=sharded, force=force)
    except BaseException:
        folder.prune()
        raise
    if ran:
        write_record(stage_dir, plan.executor, plan.shard_rows, plan.report)
    folder.remove()
    return manifest
