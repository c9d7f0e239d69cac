"""Shared fixtures: where the real Hub-format data lives, and small files in its formats."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder beside the repo (real GSM8K and MATH-500 files); skip, saying why, where it is absent."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"real Hub-format data not found at {SHARED_DATA} (the workplace's shared/data)")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    """Write rows as jsonl; a str row is written verbatim (to make malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drain_prefect_workers() -> None:
    """Send what Prefect's event and log workers still hold, then stop them: the next server gets new ones.

    Prefect keeps one EventsWorker per process whatever the API URL (its instance key has no
    URL), bound to the server that was current when it started. Left running after that
    server stops, it takes every later server's events too and fails each only after the
    client's retries, about 75 s; prefect_test_harness then waits for all of them at its
    teardown (EventsWorker.drain_all, no timeout): hours. Same pinning described in
    https://github.com/opsmill/infrahub/pull/10541; the harness drain is PrefectHQ/prefect#19343.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()


@contextlib.contextmanager
def prefect_api_at(api_url: str) -> Iterator[None]:
    """Point this process's Prefect client at the server `api_url` for the block; its events are sent before it ends."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            drain_prefect_workers()  # while the server still answers: after it stops, each event costs ~75 s


@contextlib.contextmanager
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect server (SQLite, prefect_test_harness) for the block, with event workers of its own."""
    from prefect.testing.utilities import prefect_test_harness

    drain_prefect_workers()  # a worker left bound to an earlier module's server would take this one's events
    with prefect_test_harness(server_startup_timeout=120):
        yield
