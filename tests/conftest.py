"""Shared fixtures: where the real Hub-format data lives, and small files in its formats."""

from __future__ import annotations

import json
import socket
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
