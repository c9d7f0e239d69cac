"""Is a completion's answer right? One verdict for the curation filter and the GRPO reward."""

from __future__ import annotations

from collections.abc import Sequence

from curation import answers
from curation.sources import procedural


def verdicts(completions: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
             metas: Sequence[str], *, deadline_s: float = 10.0, workers: int = 2) -> list[bool | None]:
    """True/False per completion; None when no verdict came in time (an unverifiable answer).

    The answer is `answers.extract` of the completion, checked against the gold with
    math-verify in a process pool; a procedural problem also accepts its generator's own
    full-credit score (partial credit never counts).
    """
    preds = [answers.extract(c) for c in completions]
    results = answers.check_many(preds, golds, deadline_s=deadline_s, workers=workers)
    for i, (pred, source, meta) in enumerate(zip(preds, sources, metas)):
        if results[i] is not True and pred is not None and source.startswith("procedural/"):
            if procedural.is_correct(meta, pred):
                results[i] = True
    return results
