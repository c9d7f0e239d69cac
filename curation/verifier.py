"""Is a completion's answer right? One verdict for the curation filter and the GRPO reward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from curation import answers
from curation.sources import procedural


@dataclass(kw_only=True)
class Audit:
    """How the verifier fared on a batch: what it could not read or decide, and where its judges disagreed.

    Verifiers that fail silently (a reward of 1.0 for an unparsable gold, open-r1 #293)
    are found by counting, so every batch reports these.
    """

    checked: int = 0
    no_answer: int = 0  # the completion commits to no answer (`answers.extract` gives None)
    gold_unparsed: int = 0  # math-verify could not read the gold answer
    pred_unparsed: int = 0  # ... or the predicted one
    no_verdict: int = 0  # the check did not finish within its deadline
    # procedural problems: math-verify's value check against the generator's own full score
    generator_checked: int = 0
    verify_yes_generator_no: int = 0
    verify_no_generator_yes: int = 0


def verify(completions: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
           metas: Sequence[str], *, deadline_s: float = 10.0, workers: int = 2
           ) -> tuple[list[bool | None], Audit]:
    """True/False per completion (None when no verdict came in time), and the audit of the batch.

    The answer is `answers.extract` of the completion, checked against the gold with
    math-verify in a process pool. A procedural problem must also get its generator's own
    full score: math-verify compares values, so it takes an unreduced 4216/11628 for the
    62/171 that "simplify the fraction" asks for; the generator does not (and partial
    credit never counts).
    """
    preds = [answers.extract(c) for c in completions]
    found = answers.checks(preds, golds, deadline_s=deadline_s, workers=workers)
    audit = Audit(checked=len(preds), no_answer=sum(p is None for p in preds),
                  no_verdict=sum(c is None for c in found),
                  gold_unparsed=sum(c is not None and not c.gold_parsed for c in found),
                  pred_unparsed=sum(p is not None and c is not None and not c.pred_parsed
                                    for p, c in zip(preds, found)))
    results: list[bool | None] = [None if c is None else c.equal for c in found]
    for i, (pred, source, meta) in enumerate(zip(preds, sources, metas)):
        if pred is None or results[i] is None or not source.startswith("procedural/"):
            continue
        generator = procedural.is_correct(meta, pred)
        audit.generator_checked += 1
        audit.verify_yes_generator_no += results[i] and not generator
        audit.verify_no_generator_yes += generator and not results[i]
        results[i] = results[i] and generator
    return results, audit


def verdicts(completions: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
             metas: Sequence[str], *, deadline_s: float = 10.0, workers: int = 2) -> list[bool | None]:
    """`verify` without the audit: True/False per completion, None when no verdict came in time."""
    return verify(completions, golds, sources, metas, deadline_s=deadline_s, workers=workers)[0]
