"""Final-answer extraction and equivalence: the one verifier shared by curation and rewards.

`extract` finds the answer a completion commits to; `is_equivalent` decides whether it
matches the gold answer with math-verify (numbers, thousands commas, fractions, LaTeX,
units). `check_many` runs the same check in a process pool with a per-item deadline,
because math-verify bounds its own time with `signal.alarm`, which only works in a main
thread (math-verify issues #11, #22, #50, #55).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

logger = logging.getLogger(__name__)

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*")
# A plain number with optional currency sign, thousands commas and trailing word units
# ("$1,080", "72 dollars", "-4.0"): compared exactly without sympy.
_PLAIN_NUMBER = re.compile(
    r"^\s*(?:\\?\$\s*)?(?P<num>[-+\u2212]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
    r"\s*(?:\\?\$)?(?:\s*(?:\\text\{\s*)?[A-Za-z]+\.?\}?)*\s*\.?\s*$"
)


def extract(text: str | None) -> str | None:
    """Return the final answer a completion commits to, or None when it commits to none.

    Order: the single `<answer>` block, else the `\\boxed{}` answer, else the text after
    the last `####`. Two different answers (two answer blocks or two boxed values that
    differ) count as no answer: a completion must commit to one.
    """
    if not text:
        return None
    tagged = [m.strip() for m in _ANSWER_TAG.findall(text)]
    if tagged:
        if len(set(tagged)) != 1 or not tagged[0]:
            return None
        inner = boxed_contents(tagged[0])
        if inner:
            return _single(inner)
        return tagged[0]
    boxed = boxed_contents(text)
    if boxed:
        return _single(boxed)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    return None


TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")  # the trace format, in this order


def format_problem(text: str | None) -> str | None:
    """Why a completion is not exactly one reasoning block then one answer block, or None if it is."""
    if not text:
        return "empty completion"
    counts = {tag: text.count(tag) for tag in TAGS}
    wrong = [f"{tag} x{n}" for tag, n in counts.items() if n != 1]
    if wrong:
        return "needs each tag exactly once: " + ", ".join(wrong)
    positions = [text.index(tag) for tag in TAGS]
    if positions != sorted(positions):
        return "tags out of order (expected <reasoning>...</reasoning><answer>...</answer>)"
    reasoning = text[positions[0] + len(TAGS[0]) : positions[1]].strip()
    answer = text[positions[2] + len(TAGS[2]) : positions[3]].strip()
    outside = (text[: positions[0]] + text[positions[1] + len(TAGS[1]) : positions[2]]
               + text[positions[3] + len(TAGS[3]) :]).strip()
    if not reasoning or not answer:
        return "empty reasoning or answer block"
    if outside:
        return f"text outside the blocks: {outside[:40]!r}"
    return None


def _single(candidates: list[str]) -> str | None:
    """The one distinct non-empty candidate, or None when there are several or none."""
    distinct = {c.strip() for c in candidates if c.strip()}
    return distinct.pop() if len(distinct) == 1 else None


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}` in text, braces balanced."""
    found = []
    for match in _BOXED_START.finditer(text):
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            depth, start = 0, pos
            for i in range(pos, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        found.append(text[start + 1 : i])
                        break
        else:  # `\boxed 5`: the argument is the next token
            token = re.match(r"[^\s$]+", text[pos:])
            if token:
                found.append(token.group(0))
    return found


def plain_number(text: str) -> Decimal | None:
    """The value of a plain number such as "1,080", "$72" or "72 dollars", else None."""
    match = _PLAIN_NUMBER.match(text)
    if not match:
        return None
    digits = re.sub(r"[\s,]", "", match.group("num")).replace("\u2212", "-")
    try:
        return Decimal(digits)
    except InvalidOperation:
        return None


@dataclass(frozen=True)
class Check:
    """One answer check: the verdict, and whether each side could be read at all (for the audit)."""

    equal: bool
    gold_parsed: bool = True
    pred_parsed: bool = True


def compare(pred: str | None, gold: str, *, timeout_s: int | None = 5) -> Check:
    """Check a predicted answer against the gold (gold first, as math-verify needs), saying what was unreadable."""
    if pred is None or not pred.strip() or not gold.strip():
        return Check(equal=False, gold_parsed=bool(gold.strip()), pred_parsed=bool(pred and pred.strip()))
    pred_num, gold_num = plain_number(pred), plain_number(gold)
    if pred_num is not None and gold_num is not None:
        return Check(equal=pred_num == gold_num)
    # math-verify's timeouts use signal.alarm, which raises outside the main thread.
    if threading.current_thread() is not threading.main_thread():
        timeout_s = None
    from math_verify import parse, verify  # sympy import costs ~1 s: only when needed

    # Gold wrapped as inline math matched all 500 MATH-500 references, bare only 392.
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout_s)
    # Boxing the prediction gives it LaTeX normalisation (units, \text, \$).
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout_s)
    # math-verify falls back to the raw string when it cannot read the math: only an expression counts as read.
    read = [any(not isinstance(x, str) for x in parsed) for parsed in (gold_parsed, pred_parsed)]
    if not gold_parsed or not pred_parsed:
        return Check(equal=False, gold_parsed=read[0], pred_parsed=read[1])
    return Check(equal=bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s)), gold_parsed=read[0],
                 pred_parsed=read[1])


def is_equivalent(pred: str | None, gold: str, *, timeout_s: int | None = 5) -> bool:
    """True when the predicted answer equals the gold answer (gold first, as math-verify needs)."""
    return compare(pred, gold, timeout_s=timeout_s).equal


def _check_one(pair: tuple[str | None, str]) -> Check:
    """Worker entry point: runs in a pool process's main thread, so signals work."""
    pred, gold = pair
    try:
        return compare(pred, gold)
    except Exception:  # noqa: BLE001 - a row that breaks the checker is a wrong answer
        logger.debug("checker failed on pred=%r gold=%r", pred, gold, exc_info=True)
        return Check(equal=False)


def check_many(preds: Sequence[str | None], golds: Sequence[str], *, deadline_s: float = 10.0,
               workers: int = 2) -> list[bool | None]:
    """Check pairs in a process pool; an item past its deadline gives None (not verified)."""
    return [None if c is None else c.equal for c in checks(preds, golds, deadline_s=deadline_s, workers=workers)]


def checks(preds: Sequence[str | None], golds: Sequence[str], *, deadline_s: float = 10.0,
           workers: int = 2) -> list[Check | None]:
    """`compare` every pair in a process pool; an item past its deadline gives None (no verdict).

    A stuck item (e.g. sympy on `9^{9^{9^9}}`) costs at most `deadline_s`: its pool is
    killed and the remaining items go to a fresh one.
    """
    if len(preds) != len(golds):
        raise ValueError(f"check_many needs as many golds as preds: {len(golds)} != {len(preds)}")
    results: list[Check | None] = [None] * len(preds)
    # Plain numbers and missing answers need no sympy: decide them here, send the rest to the pool.
    pending = []
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        if pred is None or not pred.strip() or (plain_number(pred) is not None and plain_number(gold) is not None):
            results[i] = compare(pred, gold)
        else:
            pending.append(i)
    while pending:
        pending = _run_pool(preds, golds, pending, results, deadline_s, workers)
    return results


def _run_pool(preds, golds, pending, results, deadline_s, workers) -> list[int]:
    """Run pending items until one stalls; return the items still to do after a stall."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy JAX/threads state
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = {i: pool.submit(_check_one, (preds[i], golds[i])) for i in pending}
        for n, (i, future) in enumerate(futures.items()):
            try:
                results[i] = future.result(timeout=deadline_s)
            except (cf.TimeoutError, cf.process.BrokenProcessPool) as err:
                logger.warning("answer check gave no verdict (%s after %.0f s): pred=%.80r",
                               type(err).__name__, deadline_s, preds[i])
                results[i] = None
                rest = [j for j in pending[n + 1 :] if not futures[j].done() or futures[j].exception()]
                for j in pending[n + 1 :]:
                    if futures[j].done() and futures[j].exception() is None:
                        results[j] = futures[j].result()
                _kill(pool)
                return rest
        return []
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    """Terminate a pool's workers: a stuck sympy call never returns on its own."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()
