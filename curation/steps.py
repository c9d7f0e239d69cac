"""Exact arithmetic step checker: which arithmetic claims in a reasoning trace are false.

A claim is `side REL side [REL side ...]`: numbers joined by + - * / ^ (x × ÷ · **, \\times \\cdot \\div
\\frac{a}{b}, "p% of y", brackets, superscripts "10⁻³"); REL is `=` or ≈ (~=, = ~, approx, \\approx). GSM8K
notes `<<48/2=24>>` count too, and so do verbal claims ("the sum of 5 and 6 is 11", `curation.step_words`).
Sides are read by `curation.step_reader` and evaluated exactly with `Fraction` (never `eval`). A link holds
when it is equal, or: `=` with a bare decimal of d places that the other side rounds or truncates to
(`<<10/3=3.33>>`, "66.666...%"); `≈` within max(half a unit in the last written place, 1% of the larger
side), an integer's last place being its last non-zero digit ("≈ 30" allows 25..35); a `%` read as /100 or
as a label ("20% = 0.2", "15 / 90 * 100% = 16.67"); "= 6!" as an exclamation or a factorial; "13 / 6 = 2"
when the line speaks of a remainder; a running total "3/2 = 1.50 + 3 = 4.50" restarts at 1.50.

Skipped, never guessed (`skipped` counts relation signs beside a number that no checked claim used):
variables and value-changing words ("x = 5", "2 dozen = 24"), claims after a connective or a label ("3 times
4 = 12", "Week 2 = 35 + 35"), dates, times, ratios, ranges, division by zero, huge or irrational powers,
numbers past 4,300 digits, sums of different measures, conversions ("1 hour = 60 minutes") and labels
("Area of 4 bedrooms = 121 * 4"). A chain whose first side is such a tail still has its later links checked
("f(2) = 2^2 + 1 = 5"). Bare integers restated in prose ("4 = 4") are checked only where they stand alone
as a claim ("So 7 = 9."): not as list markers, labels, years or counts.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from curation import step_words
from curation.step_reader import (MEASURES, MONEY, BinOp, Lit, Node, Parser, Symbolic, Tok, TooDeep, Unevaluable,
                                  has_lit, is_unit, leftmost, shown_as, tokenize, value)

logger = logging.getLogger(__name__)

_ANNOTATION = re.compile(r"<<([^<>\n]*)>>")
_DIGIT, _LINE = re.compile(r"\d"), re.compile(r"[^\n]+")
# A line longer than this is no step anyone wrote (GSM8K and MATH-500 lines stay under 3,000
# characters): it is skipped and counted, so one junk line of 100 KB costs nothing to tokenize.
MAX_LINE_CHARS = 10_000
_RELATION = re.compile(r"[=≈≃~]|approx")
_ALIGNED = re.compile(r"&(?=\s*(?:=|≈|\\approx(?![A-Za-z])))")
# A claim right after one of these ends a verbal computation: "3 times 4 + 1 = 13".
_CONNECTIVES = frozenset(
    "times plus minus over by than into from divided multiplied per twice thrice double triple half less more "
    "fewer squared cubed sqrt root add adding subtract subtracting multiply multiplying divide dividing x log "
    "ln sin cos tan exp mod choose".split())
# A number after one of these is a name, not a quantity: "Week 2 = 35 + 35", "day 1 * 2".
_LABELS = frozenset("day week month year step page chapter case part level round game question problem "
                    "grade floor room row line option stage phase".split())
# "of" after these (or after a number) multiplies: "half of 10 + 2" is not "10 + 2".
_FRACTION_WORDS = frozenset("half halves third thirds quarter quarters fourth fourths fifth fifths sixth "
                            "sixths tenth tenths twice double triple square cube root percent product".split())
# Words after which integers joined by "=" claim: "So 7 = 9".
_DISCOURSE = frozenset("so thus hence therefore then now because since means gives get gets makes is".split())
_MARKUP = frozenset(("-", "*", "•", ">", "`", ":"))  # a bullet, a quote, code, "**Step 2:** 7 = 9"
_GLUE_BEFORE, _PUNCT = frozenset("([{$\"'“‘=*~`"), frozenset(".,;:?")


@dataclass(frozen=True, kw_only=True)
class StepReport:
    """What `check` found: claims evaluated, claim-like spans it could not read, the false claims."""

    checked: int
    skipped: int
    false: list[str]


@dataclass(frozen=True, kw_only=True)
class StepTally:
    """What `check_many` found: claims checked and skipped over all traces, and each trace's false claims."""

    checked: int
    skipped: int
    false: list[list[str]]


def false_claims(text: str) -> list[str]:
    """The false arithmetic claims `text` states, each exactly as written in it."""
    return check(text).false


def check(text: str) -> StepReport:
    """Parse and exactly evaluate every arithmetic claim in a reasoning trace."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"check() reads a trace as str (None as empty), got {type(text).__name__}: {text!r:.60}")
    return _check(text)


def check_many(texts: Sequence[str | None]) -> StepTally:
    """`check` over many traces (None as empty) at once: the filter's loop, without a report per trace."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"check_many() reads str or None, item {i} is {type(text).__name__}: {text!r:.60}")
    checked = skipped = 0
    found = []
    for text in texts:
        report = _check(text)
        checked, skipped = checked + report.checked, skipped + report.skipped
        found.append(report.false)
    return StepTally(checked=checked, skipped=skipped, false=found)


def _check(text: str | None) -> StepReport:
    """`check` without the type check: notes first, then the prose (symbolic claims by line, verbal ones)."""
    if not text or not _DIGIT.search(text):
        return StepReport(checked=0, skipped=0, false=[])
    notes, prose = [], text
    if "<<" in text:
        notes = [(text, m.start(1), m.end(1), True) for m in _ANNOTATION.finditer(text)]
        prose = _ANNOTATION.sub(lambda m: " " * len(m.group()), text)  # same length: offsets hold
    if "&" in prose:  # LaTeX alignment, "12 \times 15 &= 180 \\": a space, so the claim reads on
        prose = _ALIGNED.sub(" ", prose)
    checked, skipped, spans = step_words.check(prose)
    noted: list[tuple[int, int]] = []
    for segment in notes + [(prose, *m.span(), False) for m in _LINE.finditer(prose) if _RELATION.search(m.group())]:
        if segment[2] - segment[1] > MAX_LINE_CHARS:
            skipped += 1
            continue
        c, s, found = _check_segment(*segment)
        checked, skipped = checked + c, skipped + s
        (noted if segment[3] else spans).extend(found)
    return StepReport(checked=checked, skipped=skipped, false=[text[a:b] for a, b in noted + sorted(spans)])


class _Line:
    """One segment's text and tokens, with what the context rules look up more than once."""

    def __init__(self, text: str, lo: int, hi: int, toks: list[Tok]):
        self.text, self.lo, self.hi, self.toks, self.n = text, lo, hi, toks, len(toks)
        self._first_lp: int | None = None
        self.remain_at = text.rfind("remain", lo, hi)  # "13 / 6 = 2 ... remainder 1"

    def first_lp(self) -> int:
        """Index of the line's first opening bracket (n when none), found once."""
        if self._first_lp is None:
            self._first_lp = next((k for k, t in enumerate(self.toks) if t.kind == "lp"), self.n)
        return self._first_lp

    def tok(self, k: int) -> Tok | None:
        """Token k, None outside the line."""
        return self.toks[k] if 0 <= k < self.n else None


def _starts_claim(toks: list[Tok], j: int) -> bool:
    """Whether a claim may start at token j: a number, a bracket, \\frac, or a tight minus ("-5")."""
    t = toks[j]
    return t.kind in ("num", "lp", "frac") or (
        t.text in ("-", "−") and j + 1 < len(toks) and toks[j + 1].kind == "num" and toks[j + 1].start == t.end)


def _check_segment(text: str, lo: int, hi: int, note: bool) -> tuple[int, int, list[tuple[int, int]]]:
    """Checked count, skipped count and the spans of false claims in text[lo:hi] (a line, or a note)."""
    toks = tokenize(text, lo, hi)
    line, parser, checked, false, used, j = _Line(text, lo, hi, toks), Parser(toks), 0, [], set(), 0
    while j < line.n:
        if toks[j].kind not in ("num", "lp", "frac") and not _starts_claim(toks, j):  # most tokens: no call
            j += 1
            continue
        try:
            claim = parser.claim(j)
            if claim is None:
                j = max(j + 1, parser.i)
                continue
            sides, rels, e = claim
            # "a_5 = 2 + 4 \cdot 3 = 14": the first side is a tail, the rest still claims (and parses alike)
            head = 0
            while not (ok := _left_ok(line, j, e)) and len(rels) - head > 1 and _starts_claim(toks, rels[head] + 1):
                j, head = rels[head] + 1, head + 1
            if not ok:
                j = rels[head] + 1 if len(rels) - head > 1 else e
                continue
            sides, rels = (sides[head:], rels[head:]) if head else (sides, rels)
            verdict = _judge(line, j, e, sides, [toks[r] for r in rels], note) if _right_ok(line, e) else None
        except Symbolic:
            j += 1
            continue
        except (RecursionError, TooDeep):  # "((((...))))" deeper than any step: the rest of the line is skipped
            logger.debug("line nested too deeply to parse: %r", text[lo : lo + 80])
            break
        if verdict is not None:
            checked += 1
            used.update(rels)
            if not verdict:
                false.append((toks[j].start, toks[e - 1].end))
        j = e
    skipped = sum(1 for i, t in enumerate(toks) if t.kind == "rel" and i not in used and (
        (i and toks[i - 1].kind in ("num", "rp")) or (i + 1 < line.n and toks[i + 1].kind in ("num", "lp", "frac"))))
    return checked, skipped, false


# ---- the left edge: is the claim whole, or the tail of something bigger?

def _left_ok(line: _Line, j: int, e: int) -> bool:
    """False when the claim starting at token j is the tail of something bigger: "n + 1 = 6"."""
    if _glued_to_text(line, j):
        return _after_colon_label(line, j)
    prev = line.tok(j - 1)
    if prev is None:
        return True
    if prev.kind == "op":
        return not _operand_outside(line, j)
    if prev.kind == "word":
        return not (_after_connective(line, j) or _after_label(line, j) or _continues_a_sum(line, j)
                    or _compound_quantity(line, j) or _priced_per_item(line, j) or _a_part_of(line, j))
    if prev.kind == "lp":
        return _closes_its_bracket(line, e)
    if _broken_decimal(line, j) or _stray_thousands_space(line, j):
        return False
    if prev.kind == "rp":
        return _after_list_marker(line, j)
    return prev.kind not in ("num", "block", "cmd")


def _glued_to_text(line: _Line, j: int) -> bool:
    """Whether the claim's first character touches text (not "(", "$" or "=") before it: "f(2) = 4"."""
    start = line.toks[j].start
    return start > line.lo and line.text[start - 1] not in _GLUE_BEFORE and not line.text[start - 1].isspace()


def _after_colon_label(line: _Line, j: int) -> bool:
    """Whether a glued claim follows a word and a colon: "Third year:88-22 = 66"."""
    start = line.toks[j].start
    return line.text[start - 1] == ":" and start - 2 >= line.lo and line.text[start - 2].isalpha()


def _operand_outside(line: _Line, j: int) -> bool:
    """Whether the operator before the claim has its left operand outside it: "n + 1 = 6" read at "1"."""
    before = line.tok(j - 2)
    return before is not None and before.kind not in ("lp", "rel") and before.text not in _PUNCT


def _after_connective(line: _Line, j: int) -> bool:
    """Whether a verbal operation takes the claim's first number: "3 times 4 = 12"."""
    return line.toks[j - 1].text.lower() in _CONNECTIVES


def _after_label(line: _Line, j: int) -> bool:
    """Whether the claim's first number is a name: "Week 2 = 35 + 35"."""
    return line.toks[j - 1].text.lower() in _LABELS


def _continues_a_sum(line: _Line, j: int) -> bool:
    """Whether an operator before the word before the claim makes it a later term: "25 classmates + his 1 teacher"."""
    before = line.tok(j - 2)
    return before is not None and before.kind == "op"


def _compound_quantity(line: _Line, j: int) -> bool:
    """Whether the claim continues a quantity in two units: "6 feet 2 inches = 74 inches"."""
    before = line.tok(j - 2)
    return before is not None and before.kind == "num" and is_unit(line.toks[j - 1])


def _priced_per_item(line: _Line, j: int) -> bool:
    """Whether a lone price follows "at", pricing a count: "90 bulbs at $.50 = $45"."""
    return line.toks[j - 1].text.lower() == "at" and (nxt := line.tok(j + 1)) is not None and nxt.kind == "rel"


def _a_part_of(line: _Line, j: int) -> bool:
    """Whether "of" after a number or a fraction word takes the claim as its operand: "half of 10 + 2 = 7"."""
    before = line.tok(j - 2)
    return line.toks[j - 1].text.lower() == "of" and before is not None and (
        before.kind == "num" or before.text.lower() in _FRACTION_WORDS)


def _closes_its_bracket(line: _Line, e: int) -> bool:
    """Whether a claim opened inside a bracket closes it: "($100 * 2 = $200)"."""
    return (after := line.tok(e)) is not None and after.kind == "rp"


def _broken_decimal(line: _Line, j: int) -> bool:
    """Whether the claim continues a decimal broken by a space: ".8 + . 84 = 1.64"."""
    before = line.tok(j - 2)
    return line.toks[j - 1].text == "." and before is not None and before.kind == "op"


def _stray_thousands_space(line: _Line, j: int) -> bool:
    """Whether the claim starts inside a number written with a stray space: "14, 400 / 80 = 180"."""
    prev, before = line.toks[j - 1], line.tok(j - 2)
    return (prev.text == "," and before is not None and before.kind == "num" and before.end == prev.start
            and len(before.text) <= 3 and len(line.toks[j].text) == 3)


def _after_list_marker(line: _Line, j: int) -> bool:
    """Whether a ")" before the claim closes a list marker ("1)", "(b)", "Case 2)"), not a factor: "1) 3 + 4 = 7"."""
    prev, before = line.toks[j - 1], line.tok(j - 2)
    if prev.text != ")" or before is None or before.end != prev.start or not (
            (before.kind == "num" and before.text.isdigit()) or (before.kind == "word" and len(before.text) == 1)):
        return False
    opener = line.tok(j - 3)
    if opener is not None and opener.text == "(":
        return j == 3 or line.toks[j - 4].kind == "word"
    return line.first_lp() >= j - 2


# ---- the right edge: does the last side end where the parse ended?

def _right_ok(line: _Line, e: int) -> bool:
    """False when the last side goes on in a way not parsed: "= 2 + n"."""
    return not (_glued_after(line, e) or _number_follows(line, e) or _expression_goes_on(line, e))


def _glued_after(line: _Line, e: int) -> bool:
    """Whether text touching the last side continues it: "= 5-year"."""
    text, end = line.text, line.toks[e - 1].end
    if end >= line.hi or text[end].isspace():
        return False
    c, c2 = text[end], text[end + 1 : end + 2]
    return (c.isalnum() or c in "/^_-−–(" or (c in ".:" and (c2.isdigit() or c2 == "\\"))
            or (c == "," and c2.strip() != "") or (c == "!" and c2 != "" and (c2.isalnum() or c2 in "=(")))


def _number_follows(line: _Line, e: int) -> bool:
    """Whether another number follows the last side: "= 2 hours 30 minutes"."""
    nxt, after = line.tok(e), line.tok(e + 1)
    return nxt is not None and (nxt.kind in ("num", "block", "frac")
                                or (nxt.kind == "lp" and nxt.start == line.toks[e - 1].end)
                                or (after is not None and is_unit(nxt) and after.kind == "num"))


def _expression_goes_on(line: _Line, e: int) -> bool:
    """Whether an operator and an operand follow the last side: "= 4 * \\sqrt{2}"."""
    nxt, after = line.tok(e), line.tok(e + 1)
    return (nxt is not None and after is not None and nxt.kind == "op"
            and after.kind in ("num", "lp", "word", "frac", "cmd", "block"))


# ---- the verdict

def _judge(line: _Line, j: int, e: int, sides: list[Node], rels: list[Tok], note: bool) -> bool | None:
    """True if every checked link holds, False if one fails, None if there was nothing to check."""
    lits = [s if isinstance(s, Lit) else None for s in sides]
    if not note and all(lit is not None and not lit.fancy for lit in lits) and not _bare_claim(line, j, lits, rels):
        return None  # "Question 1 = 5", "in 2020 = ...": names and years; a calculator note "<<4=5>>" is a claim
    end = line.toks[e - 1].end
    try:
        readings = [_readings(s, lit) for s, lit in zip(sides, lits)]
        if line.text[end : end + 1] == "!":  # after the last side: an exclamation or a factorial ("= 3!")
            readings[-1] += _factorial(lits[-1])
        checked = False
        for i, rel in enumerate(rels):
            a, b = lits[i], lits[i + 1]
            if i == 0 and a is not None and b is None and (not a.fancy or (a.unit or "$") != "$"):
                continue  # a label: "Area of 4 bedrooms = 121 * 4", "2 kg = 2 * 1000"
            if _converts(sides[i], a, sides[i + 1], b) or _running_total(sides, i, readings[i][0][0]) or (
                    line.remain_at >= end and _quotient_with_remainder(sides[i], b)):
                continue
            checked = True
            if not any(_holds(x, la, y, lb, rel.text == "≈") for x, la in readings[i] for y, lb in readings[i + 1]):
                return False
    except Unevaluable as err:
        logger.debug("skipped claim: %s", err)
        return None
    return True if checked else None


def _bare_claim(line: _Line, j: int, lits: list[Lit], rels: list[Tok]) -> bool:
    """Whether integers joined by "=" stand alone as a claim (after nothing, a sign, a discourse word or
    markup; no year among them): "So 7 = 9."."""
    prev = line.tok(j - 1)
    if any(rel.text != "=" for rel in rels) or not (
            prev is None or prev.kind == "rel" or prev.text.lower() in _DISCOURSE or prev.text in _MARKUP):
        return False
    return not any(1000 <= lit.value <= 2100 for lit in lits)  # years


def _readings(side: Node, lit: Lit | None) -> list[tuple[Fraction, Lit | None]]:
    """The side's value, and where it holds a percent also its value with "p%" read as the label p."""
    found = [(value(side), lit)]
    if has_lit(side, lambda x: x.pct):  # "15 / 90 * 100% = 16.67"
        label = lit and Lit(lit.value * 100, lit.ulp * 100, lit.zeros, False, lit.fancy, lit.unit)
        found.append((value(side, label=True), label))
    return found


def _factorial(lit: Lit | None) -> list[tuple[Fraction, None]]:
    """The reading of "= n!" as a factorial (beside its reading as an exclamation): "3 * 2 * 1 = 3!"."""
    if lit is None:
        raise Unevaluable("an expression before '!': a factorial, or an exclamation")
    if lit.value.denominator == 1 and 0 <= lit.value <= 1000 and not lit.pct:
        return [(Fraction(math.factorial(int(lit.value))), None)]
    return []  # larger: no side is that big


def _converts(side_a: Node, a: Lit | None, side_b: Node, b: Lit | None) -> bool:
    """Whether a link changes units ("1 hour = 60 minutes", "$1 / 2 = 50 cents"): not checked."""
    if a is not None and b is not None:
        return a.unit != b.unit
    bare, other = (a, side_b) if a is not None else (b, side_a)
    if bare is None or bare.unit is None:
        return False
    if bare.unit == "$":
        return has_lit(other, lambda x: x.unit in MONEY)
    return bare.unit in MEASURES and has_lit(other, lambda x: x.unit is not None) and not has_lit(
        other, lambda x: x.unit is not None and bare.unit in x.unit.split("/"))


def _running_total(sides: list[Node], i: int, before: Fraction) -> bool:
    """Whether link i restarts a running total before a further link: "$3/2 = $1.50 + $3.00 = $4.50"."""
    nxt = sides[i + 1]
    first = leftmost(nxt)
    return i + 2 < len(sides) and not isinstance(nxt, Lit) and isinstance(first, Lit) and first.value == before


def _quotient_with_remainder(side: Node, result: Lit | None) -> bool:
    """Whether the link is a whole quotient on a line that speaks of a remainder: "13 / 6 = 2, remainder 1"."""
    if not isinstance(side, BinOp) or side.op != "/" or result is None or result.value.denominator != 1:
        return False
    a, b = value(side.left), value(side.right)
    return a.denominator == b.denominator == 1 and b > 0 and a // b == result.value


def _holds(x: Fraction, a: Lit | None, y: Fraction, b: Lit | None, approx: bool) -> bool:
    """Whether x = y (or x ≈ y) given how the bare sides a and b were written."""
    if x == y:
        return True
    if approx:
        places = [lit.ulp or Fraction(10**lit.zeros) / (100 if lit.pct else 1) for lit in (a, b) if lit]
        return abs(x - y) <= max([max(abs(x), abs(y)) / 100] + [u / 2 for u in places])
    return shown_as(x, y, b) or shown_as(y, x, a)
