"""Is a completion's answer right? One verdict for the curation filter and the GRPO reward."""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
    too_long: int = 0  # completion, gold or extracted answer over its cap (`answers.too_long`): not checked
    gold_unparsed: int = 0  # math-verify could not read the gold answer
    pred_unparsed: int = 0  # ... or the predicted one
    no_verdict: int = 0  # the check did not finish within its deadline
    # procedural problems: math-verify's value check against the generator's own full score
    generator_checked: int = 0
    generator_unscored: int = 0  # refused (neither reviewed safe nor in `unsafe_tasks`) or past its deadline
    verify_yes_generator_no: int = 0
    verify_no_generator_yes: int = 0


def verify(completions: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
           metas: Sequence[str], *, deadline_s: float = 10.0, workers: int = 2,
           unsafe_tasks: Collection[str] = ()) -> tuple[list[bool | None], Audit]:
    """True/False per completion (None when no verdict came in time), and the audit of the batch.

    The answer is `answers.extract` of the completion, checked against the gold with
    math-verify in a process pool. A procedural problem must also get its generator's own
    full score: math-verify compares values, so it takes an unreduced 4216/11628 for the
    62/171 that "simplify the fraction" asks for; the generator does not (and partial
    credit never counts). Only reviewed-safe generators score here; those named in
    `unsafe_tasks` score in a subprocess (`procedural.scores`), any other gets no verdict.

    Time: math-verify and the allowed unsafe scorers each have `deadline_s` per item in
    their own processes; what runs here (extraction, plain numbers, safe scorers) is linear
    in texts capped by `answers.too_long`, whose rows are False without a check.
    """
    long = [answers.too_long(c, g) for c, g in zip(completions, golds)]
    preds = [None if why else answers.extract(c) for c, why in zip(completions, long)]
    for i, pred in enumerate(preds):
        if pred is not None and len(pred) > answers.MAX_ANSWER_CHARS:
            long[i], preds[i] = f"answer has {len(pred)} characters > {answers.MAX_ANSWER_CHARS}", None
    found = answers.checks(preds, [g if not why else "" for g, why in zip(golds, long)], deadline_s=deadline_s,
                           workers=workers)
    audit = Audit(checked=len(preds), too_long=sum(bool(why) for why in long),
                  no_answer=sum(p is None and not why for p, why in zip(preds, long)),
                  no_verdict=sum(c is None for c in found),
                  gold_unparsed=sum(c is not None and not c.gold_parsed and not why for c, why in zip(found, long)),
                  pred_unparsed=sum(p is not None and c is not None and not c.pred_parsed
                                    for p, c in zip(preds, found)))
    results: list[bool | None] = [None if c is None else c.equal for c in found]
    todo = [i for i, (pred, source) in enumerate(zip(preds, sources))
            if pred is not None and results[i] is not None and source.startswith("procedural/")]
    scored = procedural.scores([metas[i] for i in todo], [preds[i] for i in todo], unsafe_tasks=unsafe_tasks,
                               deadline_s=deadline_s)
    for i, value in zip(todo, scored):
        if value is None:  # refused or past its deadline: no verdict, as for math-verify
            audit.generator_unscored += 1
            results[i] = None
            continue
        generator = value >= 1.0
        audit.generator_checked += 1
        audit.verify_yes_generator_no += results[i] and not generator
        audit.verify_no_generator_yes += generator and not results[i]
        results[i] = results[i] and generator
    return results, audit


def verdicts(completions: Sequence[str | None], golds: Sequence[str], sources: Sequence[str],
             metas: Sequence[str], *, deadline_s: float = 10.0, workers: int = 2,
             unsafe_tasks: Collection[str] = ()) -> list[bool | None]:
    """`verify` without the audit: True/False per completion, None when no verdict came in time."""
    return verify(completions, golds, sources, metas, deadline_s=deadline_s, workers=workers,
                  unsafe_tasks=unsafe_tasks)[0]
