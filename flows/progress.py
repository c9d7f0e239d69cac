"""What a flow run's page shows while it runs: a progress artifact per long stage, a funnel table per stage.

Stages report progress through a plain callback (fraction done, 0 to 1) and never import
Prefect; this module turns the calls into one Prefect progress artifact, updated at most
once a second from a thread of its own. Training steps and teacher requests then never wait
on the Prefect API, and a callback fired inside an event loop (the teacher's) never meets
Prefect's async dispatch.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from machinery import store

logger = logging.getLogger(__name__)

LONG = ("generate", "filter", "sft", "grpo", "eval")  # the stages that publish a progress artifact
INTERVAL_S = 1.0  # the Prefect API sees at most one update a second per stage
R = TypeVar("R")


class Reporter:
    """A progress callback (fraction done) behind one Prefect progress artifact, in percent."""

    def __init__(self, key: str, description: str, *, interval_s: float = INTERVAL_S):
        from prefect.artifacts import create_progress_artifact

        # Created here, in the task's context, so Prefect ties the artifact to this flow and task run.
        self.key = key
        self.artifact_id = create_progress_artifact(0.0, key=key, description=description)
        self.interval_s = interval_s
        self._latest = 0.0
        self._sent = 0.0
        self._changed = threading.Event()
        self._stop = threading.Event()
        # The thread runs in a copy of this context: the same Prefect settings (API URL) as the task's.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._send_loop,),
                                        name=f"progress {key}", daemon=True)
        self._thread.start()

    def __call__(self, fraction: float) -> None:
        """Record how far the stage is (0 to 1); the artifact catches up within a second."""
        self._latest = min(max(float(fraction), 0.0), 1.0) * 100
        self._changed.set()

    @property
    def percent(self) -> float:
        """The latest progress reported, in percent."""
        return self._latest

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if self._changed.wait(timeout=self.interval_s):
                self._changed.clear()
                self._send(self._latest)
                self._stop.wait(self.interval_s)  # at most one update per interval

    def _send(self, percent: float) -> None:
        from prefect.artifacts import update_progress_artifact

        if percent == self._sent:
            return
        try:
            update_progress_artifact(self.artifact_id, percent)
            self._sent = percent
        except Exception as error:  # noqa: BLE001 - a lost update must not fail the stage; the next one repairs it
            logger.warning("progress artifact %s: update to %.1f%% failed: %s", self.artifact_id, percent, error)

    def finish(self, percent: float = 100.0) -> None:
        """Stop the updating thread and set the artifact to `percent` (100: the stage is done or was skipped)."""
        self._stop.set()
        self._changed.set()
        self._thread.join()
        self._send(percent)


@contextlib.contextmanager
def reporting(key: str, description: str) -> Iterator[Reporter]:
    """A Reporter that ends at 100 when the block completes; on an error it stays where the stage stopped."""
    reporter = Reporter(key, description)
    try:
        yield reporter
    except BaseException:
        reporter.finish(reporter.percent)
        raise
    reporter.finish(100.0)


class CountingExecutor:
    """An executor that reports the fraction of its items (row shards) done as each finishes.

    Wraps the executor a sharded stage runs on, so the filter's progress counts row shards on
    either engine without the stage knowing.
    """

    def __init__(self, inner: Any, progress: Any):
        self.inner, self.progress = inner, progress

    def map(self, fn: Any, items: Sequence[Any], *, name: str, shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        """The inner executor's map, reporting done / total after each item."""
        total = len(items)
        for done, pair in enumerate(self.inner.map(fn, items, name=name, shared=shared), start=1):
            self.progress(done / total)
            yield pair

    def __getattr__(self, attr: str) -> Any:  # name, in_process, task_cpus...: the inner executor's
        return getattr(self.inner, attr)


def funnel(stage_dir: Path, manifest: store.Manifest) -> list[dict[str, Any]]:
    """A stage's funnel as table rows: rows in, kept, rejected, then each reject reason with its count.

    From the stage's stats record (`stats.json`); a stage without one (cards) from its manifest's counts.
    """
    stats_file = stage_dir / store.STATS
    if not stats_file.is_file():
        return [{"what": name.replace("_", " "), "rows": count} for name, count in manifest.counts.items()]
    stats = json.loads(stats_file.read_text())
    rows = [{"what": name.replace("_", " "), "rows": stats[name]} for name in ("rows_in", "kept", "rejected")]
    rows += [{"what": f"rejected: {reason}", "rows": count} for reason, count in sorted(stats["reasons"].items())]
    return rows


def publish_funnel(key: str, stage: str, stage_dir: Path, manifest: store.Manifest) -> None:
    """The stage's funnel as a Prefect table artifact under `key`."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(funnel(stage_dir, manifest), key=key,
                          description=f"{stage}: rows in, kept and rejected by reason ({stage_dir})")
