"""Final-answer extraction and equivalence: the one verifier shared by curation and rewards.

`extract` finds the answer a completion commits to; `is_equivalent` decides whether it
matches the gold answer with math-verify (numbers, thousands commas, fractions, LaTeX,
units). `check_many` runs the same check in a process pool with a per-item deadline,
because math-verify bounds its own time with `signal.alarm`, which only works in a main
thread (math-verify issues #11, #22, #50, #55).

Everything else here reads untrusted text (teacher completions, GRPO samples, source rows)
in the caller's process, where no deadline applies: it runs in time linear in the text, and
the verifier refuses inputs over `MAX_COMPLETION_CHARS` / `MAX_ANSWER_CHARS` (`too_long`).
benchmarks/hostile.py measures the slowest input.
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

# Every pattern here reads untrusted text (teacher completions, GRPO samples, source rows) in
# the main process, outside the verifier pool's deadline: each must run in time linear in
# the text. `<answer>(.*?)</answer>` took ~30 s on 160 KB of `<answer>`, so the tags are
# found one by one and paired in a single pass instead.
_ANSWER_TAG = re.compile(r"</?answer>", re.IGNORECASE)
_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*+")
_TOKEN = re.compile(r"[^\s$]++")  # the argument of `\boxed 5`
_BRACE = re.compile(r"[{}]")
# A plain number with optional currency sign, thousands commas and trailing word units
# ("$1,080", "72 dollars", "-4.0"): compared exactly without sympy. Possessive quantifiers
# give each character one way to match: the old backtracking pattern took 2.6 s on
# "3 apples and oranges in the basket;", doubling with every word.
_PLAIN_NUMBER = re.compile(
    r"\s*+(?:\\?\$\s*+)?+(?P<num>[-+\u2212]?+\s*+(?:\d{1,3}(?:,\d{3})++|\d++)(?:\.\d++)?+)"
    r"\s*+(?:\\?\$)?+(?:\s*+(?:\\text\{\s*+)?+[A-Za-z]++\.?+\}?+)*+\s*+\.?+\s*+"
)
# Inputs longer than these are refused before any check (the verifier counts them as `too_long`):
# real answers are a few dozen characters and traces a few thousand, and every check stays linear.
MAX_ANSWER_CHARS = 2_000
MAX_COMPLETION_CHARS = 100_000


def extract(text: str | None) -> str | None:
    """Return the final answer a completion commits to, or None when it commits to none.

    Order: the single `<answer>` block, else the `\\boxed{}` answer, else the text after
    the last `####`. Two different answers (two answer blocks or two boxed values that
    differ, or a box inside another) count as no answer: a completion must commit to one.
    """
    if not text:
        return None
    tagged = [m.strip() for m in answer_blocks(text)]
    if tagged:
        if len(set(tagged)) != 1 or not tagged[0]:
            return None
        boxes = boxed_spans(tagged[0])
        return _committed_box(tagged[0], boxes) if boxes else tagged[0]
    boxes = boxed_spans(text)
    if boxes:
        return _committed_box(text, boxes)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    return None


def too_long(completion: str | None, gold: str | None = None) -> str | None:
    """Which input is over its cap (`MAX_COMPLETION_CHARS`, `MAX_ANSWER_CHARS`), named with its length, or None."""
    if completion is not None and len(completion) > MAX_COMPLETION_CHARS:
        return f"completion has {len(completion)} characters > {MAX_COMPLETION_CHARS}"
    if gold is not None and len(gold) > MAX_ANSWER_CHARS:
        return f"gold answer has {len(gold)} characters > {MAX_ANSWER_CHARS}"
    return None


def answer_blocks(text: str) -> list[str]:
    """The contents of every `<answer>...</answer>` block (tags in any case), as `<answer>(.*?)</answer>` finds them.

    One pass over the tags: an opening tag waits for the next closing one, tags between are content.
    """
    blocks, opened = [], None
    for tag in _ANSWER_TAG.finditer(text):
        closing = tag.group(0)[1] == "/"
        if opened is None and not closing:
            opened = tag.end()
        elif opened is not None and closing:
            blocks.append(text[opened : tag.start()])
            opened = None
    return blocks


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


def _committed_box(text: str, spans: list[tuple[int, int, int]]) -> str | None:
    """The one distinct boxed answer of text, or None for none, several, or a non-empty box inside a box.

    A box inside a box differs from the box around it, so the two are two answers; only
    the outer boxes need comparing, whose contents never overlap (linear in the text).
    """
    outer_end = -1
    for box, start, end in spans:
        if box < outer_end and text[start:end].strip():  # sliced once at most: then it returns
            return None
        outer_end = max(outer_end, end)
    return _single([text[start:end] for start, end in _outermost(spans)])


def boxed_spans(text: str) -> list[tuple[int, int, int]]:
    """(where the box starts, content start, content end) of every `\\boxed{...}` / `\\fbox{...}`, in order.

    Braces are matched in one pass over the text, so runs of `\\boxed{` cost linear time
    (the old scan from each box to its closing brace took ~6 s on 28 KB of them).
    """
    starts = list(_BOXED_START.finditer(text))
    if not starts:
        return []
    closing: dict[int, int] = {}
    stack: list[int] = []
    for brace in _BRACE.finditer(text, starts[0].end()):
        if brace.group(0) == "{":
            stack.append(brace.start())
        elif stack:
            closing[stack.pop()] = brace.start()
    spans, token_end = [], -1
    for match in starts:
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            if pos in closing:  # an unclosed box holds no answer
                spans.append((match.start(), pos + 1, closing[pos]))
            continue
        # `\boxed 5`: the argument is the next token. Inside the previous token (`\boxed\boxed\boxed...`)
        # it ends where that one does: scanning again from each box would be quadratic.
        if pos >= token_end:
            token = _TOKEN.match(text, pos)
            token_end = token.end() if token else pos
        if token_end > pos:
            spans.append((match.start(), pos, token_end))
    return spans


def _outermost(spans: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The content spans of boxes that start outside every earlier box: they never overlap."""
    found, outer_end = [], -1
    for box, start, end in spans:
        if box >= outer_end:
            found.append((start, end))
            outer_end = end
        outer_end = max(outer_end, end)
    return found


def boxed_contents(text: str) -> list[str]:
    """Contents of every outermost `\\boxed{...}` / `\\fbox{...}` in text, braces balanced.

    A box inside another is part of the outer one's content, not listed again: listing
    every nested box would copy the text once per level (quadratic on `\\boxed{` runs).
    """
    return [text[start:end] for start, end in _outermost(boxed_spans(text))]


def plain_number(text: str) -> Decimal | None:
    """The value of a plain number such as "1,080", "$72" or "72 dollars", else None."""
    match = _PLAIN_NUMBER.fullmatch(text)
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


def final_answer(text: str | None) -> str | None:
    """The final answer wherever a completion wrote it: last <answer> block, else last \\boxed{}, else last number.

    For answer accuracy, which forgives the format: an untrained model rarely writes the tags.
    A number is read whole, sign and fraction included ("-3/4", "1,080", "2.5"); a minus right
    after a letter, digit or closing bracket is an operator ("7-3" ends in 3). One pass over the
    text, no regular expressions: linear time whatever the input.
    """
    if not text:
        return None
    start = text.rfind("<answer>")
    if start >= 0:
        end = text.find("</answer>", start)
        inner = text[start + len("<answer>") : end if end >= 0 else len(text)].strip()
        if inner:
            return inner
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start >= 0:
        pos = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        depth = 0
        for i in range(pos, len(text) if text.startswith("{", pos) else pos):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                if text[pos + 1 : i].strip():
                    return text[pos + 1 : i].strip()
                break
    digits, last, i, n = "0123456789", None, 0, len(text)
    while i < n:
        if text[i] not in digits:
            i += 1
            continue
        j = i
        while j < n and text[j] in digits:
            j += 1
        # thousands groups: ",ddd" with no digit after the third
        while (j + 3 < n and text[j] == "," and all(c in digits for c in text[j + 1 : j + 4])
               and (j + 4 == n or text[j + 4] not in digits)):
            j += 4
        for mark in (".", "/"):  # a decimal part, then a denominator
            if j + 1 < n and text[j] == mark and text[j + 1] in digits:
                j += 1
                while j < n and text[j] in digits:
                    j += 1
        signed = i > 0 and text[i - 1] in "-\u2212" and (i == 1 or not (text[i - 2].isalnum() or text[i - 2] in ")]}"))
        last, i = ("-" if signed else "") + text[i:j], j
    return last
