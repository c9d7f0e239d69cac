"""Is a completion's answer right? One verdict for the curation filter and the GRPO reward."""

from __future__ import annotations

from collections.abc import Sequence

from curation import answers
from curation.sources import procedural


def verdicts(completions: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
             metas: Sequence[str], *, deadline_s: float = 10.0, workers: int = 2) -> list[bool | None]:
    """True/False per completion; None when no verdict came in time (an unverifiable answer).

    The answer is `answers.extract` of the completion, checked against the gold with
    math-verify in a process pool. A procedural problem must also get its generator's own
    full score: math-verify compares values, so it takes an unreduced 4216/11628 for the
    62/171 that "simplify the fraction" asks for; the generator does not (and partial
    credit never counts).
    """
    preds = [answers.extract(c) for c in completions]
    results = answers.check_many(preds, golds, deadline_s=deadline_s, workers=workers)
    for i, (pred, source, meta) in enumerate(zip(preds, sources, metas)):
        if results[i] is True and source.startswith("procedural/") and not procedural.is_correct(meta, pred):
            results[i] = False
    return results
