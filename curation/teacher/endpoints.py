"""Several endpoints serving one teacher model (vLLM replicas, providers): which one gets the next request.

The endpoint with the fewest requests in flight gets it (ties: the one asked least so far), so a
slow replica gets less work. One that fails `bench_after` requests in a row (errors worth a
retry: 5xx, 429, timeouts, dropped connections) is benched for `bench_s` seconds; after that it
is tried again, and one more failure benches it again. A request that failed is retried by the
teacher's own policy, usually on another endpoint: which endpoint answered never matters to the
request cache, so a resumed run may ask any of them.

An endpoint is named in logs and counts (the generate stage's stats, the data card) by its
URL with any credential redacted (`machinery.redact`), never by the URL itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from machinery import redact

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Counts:
    """One endpoint's record in one run: requests sent, answered, failed, and times benched."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    benched: int = 0


@dataclass(kw_only=True)
class Endpoint:
    """An endpoint and its state."""

    url: str
    label: str = ""  # the URL as logged and counted: credentials redacted (the default)
    in_flight: int = 0
    failures_in_a_row: int = 0
    benched_until: float = float("-inf")
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        self.label = self.label or redact.url(self.url)


class Endpoints:
    """The endpoints of one teacher; used from one asyncio loop (no locks needed)."""

    def __init__(self, urls: list[str], *, bench_after: int = 3, bench_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not urls:
            raise ValueError("a teacher needs at least one endpoint URL (teacher.base_url)")
        if bench_after < 1 or bench_s <= 0:
            raise ValueError(f"bench_after must be >= 1 and bench_s > 0, got {bench_after} and {bench_s}")
        self.all = [Endpoint(url=url, label=label) for url, label in zip(urls, _labels(urls))]
        self.bench_after = bench_after
        self.bench_s = bench_s
        self.clock = clock

    def pick(self) -> Endpoint:
        """The endpoint for the next request (counted as in flight until `done`)."""
        now = self.clock()
        ready = [e for e in self.all if e.benched_until <= now]
        if ready:
            chosen = min(ready, key=lambda e: (e.in_flight, e.counts.requests))
        else:  # all benched: the one back soonest, rather than no answer at all
            chosen = min(self.all, key=lambda e: e.benched_until)
        chosen.in_flight += 1
        chosen.counts.requests += 1
        return chosen

    def done(self, endpoint: Endpoint, *, ok: bool, endpoint_fault: bool = True) -> None:
        """Record how a request ended; `endpoint_fault=False` for errors of the request itself (a 400)."""
        endpoint.in_flight -= 1
        if ok:
            endpoint.counts.successes += 1
            endpoint.failures_in_a_row = 0
            return
        endpoint.counts.failures += 1
        if not endpoint_fault:
            return
        endpoint.failures_in_a_row += 1
        now = self.clock()
        if endpoint.failures_in_a_row >= self.bench_after and endpoint.benched_until <= now:
            endpoint.benched_until = now + self.bench_s
            endpoint.counts.benched += 1
            logger.warning("teacher endpoint %s failed %d requests in a row; benched for %.0f s", endpoint.label,
                           endpoint.failures_in_a_row, self.bench_s)

    def counts(self) -> dict[str, dict[str, int]]:
        """{redacted url: {"requests", "successes", "failures", "benched"}} for every endpoint."""
        return {e.label: asdict(e.counts) for e in self.all}


def _labels(urls: list[str]) -> list[str]:
    """Each URL redacted; URLs equal once redacted get `#2`, `#3`, ... so their counts stay apart."""
    labels: list[str] = []
    for url in urls:
        label = redact.url(url)
        labels.append(label if label not in labels else f"{label}#{labels.count(label) + 1}")
    return labels
