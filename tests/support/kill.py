"""Killing a CLI stage mid-run, the way a crash or an operator would."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def kill_after_cached(argv: list[str], cache: Path, lines: int, timeout: float = 120) -> set[str]:
    """Run `argv`, SIGKILL it once `cache` (a request cache) holds `lines` lines; the keys it had recorded."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < lines):
        time.sleep(0.05)
    process.kill()
    process.wait()
    return {json.loads(line)["key"] for line in cache.read_text().splitlines() if line.endswith("}")}
