"""Killing a CLI stage mid-run, the way a crash or an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


# Prepended to a child's code: SIGKILL the process at its `KILL_AT`th line executed in `KILL_IN` (a source file).
_LINE_KILLER = """
import os as _os, signal as _signal, sys as _sys
_target, _at, _seen = _os.path.realpath(_os.environ["KILL_IN"]), int(_os.environ["KILL_AT"]), [0]
def _lines(frame, event, arg):
    if event == "line":
        _seen[0] += 1
        if _seen[0] == _at:
            _os.kill(_os.getpid(), _signal.SIGKILL)
    return _lines
def _calls(frame, event, arg):
    return _lines if _os.path.realpath(frame.f_code.co_filename) == _target else None
"""


def kill_at_line(code: str, argv: list[str], module: Path, line: int, timeout: float = 60) -> bool:
    """Run `code` in a child that is SIGKILLed at the `line`th line it executes in `module`; whether it was.

    `code` turns the killer on with `_sys.settrace(_calls)` where the steps to interrupt begin.
    A child that ran to the end without meeting that many lines exits 0: every step has been cut.
    """
    env = {**os.environ, "KILL_IN": str(module), "KILL_AT": str(line)}
    done = subprocess.run([sys.executable, "-c", _LINE_KILLER + code, *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"the child failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return done.returncode == -signal.SIGKILL
