"""An append-only on-disk cache of finished teacher requests, so a killed run resumes.

One JSON line per finished sample, flushed as it lands: a process killed at any point
loses at most the line being written, which is skipped (and logged) on the next load.
Processes that ask at the same time (Ray tasks) each append to a file of their own and read
the others' (`read_also`): a key names the request, never the process or endpoint that made it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from curation.teacher import Completion
from machinery.store import WriteError

logger = logging.getLogger(__name__)


def request_key(model: str, prompt: Any, params: dict[str, Any], sample_idx: int) -> str:
    """The identity of one sample: model, prompt, sampling params (not n) and sample index."""
    payload = json.dumps({"model": model, "prompt": prompt, "params": params, "sample": sample_idx},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class RequestCache:
    """Finished samples by request key, backed by a JSONL file (and read from `read_also`, never written)."""

    def __init__(self, path: Path, *, read_also: Sequence[Path] = ()):
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        for other in read_also:
            if other != path and other.is_file():
                self._load(other, torn=logging.DEBUG)  # another process may be mid-line right now
        if path.is_file():
            self._load(path, torn=logging.WARNING)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._handle.write("\n")  # end a torn line so the next entry starts clean

    def _load(self, path: Path, *, torn: int) -> None:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.log(torn, "%s:%d: skipping a torn cache line (a killed run)", path, number)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached sample, or None."""
        return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Record a finished sample and flush it to the OS at once."""
        entry = {**entry, "key": key}
        self._entries[key] = entry
        try:
            self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._handle.flush()
        except OSError as error:  # a full disk: say which file, not a traceback from deep in asyncio
            raise WriteError(error.errno, f"cannot append to {self.path}: {error.strerror or error}") from error

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def to_entry(completion: Completion) -> dict[str, Any]:
    """What the cache keeps of a finished sample."""
    return {"text": completion.text, "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "latency_s": completion.latency_s, "attempts": completion.attempts}


def from_entry(prompt_idx: int, sample_idx: int, entry: dict[str, Any]) -> Completion:
    """A cached sample as a Completion of this run (marked cached)."""
    return Completion(prompt_idx=prompt_idx, sample_idx=sample_idx, text=entry["text"],
                      finish_reason=entry["finish_reason"], prompt_tokens=entry["prompt_tokens"],
                      completion_tokens=entry["completion_tokens"], latency_s=entry["latency_s"],
                      attempts=entry.get("attempts", 1), cached=True)


class Ledger:
    """One `generate` call's samples: cached ones up front, new ones recorded (and cached) as they land.

    Shared by every teacher backend, so all resume the same way and show the same
    progress bar (samples done, tokens per second).
    """

    def __init__(self, cache: RequestCache | None, model: str, prompts: list[Any], params: dict[str, Any], n: int,
                 *, progress: bool = True):
        self.cache, self.n, self.prompts = cache, n, len(prompts)
        self.results: dict[tuple[int, int], Completion] = {}
        self.keys: dict[tuple[int, int], str] = {}
        self.missing: list[tuple[int, int]] = []  # (prompt, sample) the cache did not have, in order
        self.hits = 0  # samples the cache had: nobody asks (or bills) for them again
        for p, prompt in enumerate(prompts):
            for s in range(n):
                key = self.keys[p, s] = request_key(model, prompt, params, s)
                hit = cache.get(key) if cache is not None else None
                if hit is not None:
                    self.results[p, s] = from_entry(p, s, hit)
                    self.hits += 1
                else:
                    self.missing.append((p, s))
        self._bar = tqdm(total=len(prompts) * n, initial=len(self.results), desc=f"teacher {model}", unit="sample",
                         disable=not progress, dynamic_ncols=True)
        self._tokens, self._started = 0, time.perf_counter()

    def record(self, completion: Completion) -> None:
        """Keep a new sample; a finished one (no error) goes to the cache at once."""
        where = (completion.prompt_idx, completion.sample_idx)
        self.results[where] = completion
        if self.cache is not None and completion.error is None:
            self.cache.put(self.keys[where], to_entry(completion))
        self._tokens += completion.completion_tokens or 0
        self._bar.update(1)
        rate = self._tokens / max(1e-9, time.perf_counter() - self._started)
        self._bar.set_postfix(tok_per_s=f"{rate:.0f}", refresh=False)

    def completions(self) -> list[Completion]:
        """Every sample, ordered by (prompt, sample); closes the progress bar."""
        self._bar.close()
        return [self.results[p, s] for p in range(self.prompts) for s in range(self.n)]
