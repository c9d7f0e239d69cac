"""Exact arithmetic step checker: which arithmetic claims in a reasoning trace are false.

A claim is `side REL side [REL side ...]`: numbers joined by + - * / ^ (x × ÷ · **, \\times \\cdot \\div
\\frac{a}{b}, "p% of y", brackets, superscripts "10⁻³"); REL is `=` or ≈ (~=, = ~, approx, \\approx); GSM8K
notes `<<48/2=24>>` count too. Sides become a small AST evaluated with `Fraction` (never `eval`). A link holds
when it is equal, or: `=` with a bare decimal of d places that the other side rounds or truncates to (|a - c|
<= 0.5 * 10**-d, or < 10**-d toward zero: GSM8K writes `<<10/3=3.33>>`, "66.666...%"); `≈` within max(half a
unit in the last written place, 1% of the larger side), an integer's last place being its last non-zero digit
("≈ 30" allows 25..35); a `%` read as /100 or as a label ("20% = 0.2", "15 / 90 * 100% = 16.67").
Read as people write: "28 / 1/5 = 140" (a tight 1/5 is one number), mixed numbers "1 1/2", "80 000",
"1{,}080", list markers "1) 3 + 4 = 7", markdown `code` and **bold**, "= 6!" as an exclamation or a factorial,
a "$" before a measure as LaTeX math ("$ 45 kg + 12 kg = 57 kg $"), a spaced "–" as minus, units "cars/row"
and "per hour", running totals "3/2 = 1.50 + 3 = 4.50", and "13 / 6 = 2" when the line speaks of a remainder.
Skipped, never guessed (`skipped` counts relation signs beside a number that no checked claim used): variables
and value-changing words ("x = 5", "n + 1 = 6", "2 dozen = 24"), claims after a connective or label ("3 times
4 = 12", "Week 2 = 35 + 35"), dates, times, ratios, ranges, ordinals, division by zero, huge or irrational
powers, "100 - 20%", sums of different measures, conversions ("1 hour = 60 minutes", "$1 / 2 = 50 cents"),
labels ("Area of 4 bedrooms = 121 * 4") and prose restatements ("4 = 4"). A chain whose first side is such a
tail still has its later links checked ("a_5 = 2 + 4 \\cdot 3 = 14", "f(2) = 2^2 + 1 = 5"); LaTeX's alignment
"&=" reads as "=". Measured: 27 of GSM8K train's 7,473 answers flagged, each a real slip of GSM8K's own
("14*20=140"). The guards come from false alarms seen there, in GSM8K test and MATH-500 solutions, and in the
hand-written look-alikes of tests/curation/test_steps.py.

`check` runs these rules compiled (curation/_stepscan.c, a line-for-line port, ~36x faster: the filter stage's
budget) where setup.py could build it; this Python code is the reference it is tested against, the path where
it is missing, and the path for what the port hands back (numbers past 2^125, fractional powers, deep nesting).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple, Sequence

try:  # the same checker in C, ~36x faster (setup.py builds it where a C compiler exists)
    from curation import _stepscan
except ImportError:
    _stepscan = None

logger = logging.getLogger(__name__)

# Alternatives in order of frequency (words first); the leading \s* spares failing all of them at each space.
_TOKEN = re.compile(
    r"""\s*(?:(?P<rel>~=|=~|==|=|≈|≃|~|\\approx(?![A-Za-z])|approx(?:imately)?\b\.?)
    |(?P<word>[A-Za-z]+(?:'[a-z]+)?)
    |(?P<block>\d{4}-\d\d?-\d\d?|\d\d?/\d\d?/\d{4}|\d\d?:\d\d|\d+(?:st|nd|rd|th)\b|0\d+)
    |(?P<mixed>(?:[$€£¥]\s*)?\d+\s+(?:and\s+)?(?:[$€£¥]\s*)?(?:\([1-9]\d*/\d+\)|[1-9]\d*/\d+)(?![\d/.]))
    |(?P<num>(?:(?:[$€£¥]|\\\$)\s*)?
        (?:\d{1,3}(?:(?:,|\{,\})\d{3})+(?!\d)|\d{1,3}(?:[ ]\d{3})+(?!\d)|\d+|(?<![\w.])(?=\.\d))
        (?:\.\d+(?:\.\.\.|…)?)?(?:\s*(?:\\?%|percent\b))?)
    |(?P<other>\\[][()]|\\(?:begin|end)\{[A-Za-z*]*\})
    |(?P<sup>⁻?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)
    |(?P<op>\*\*|[-+*/^×÷·⋅−]|(?<=\s)–(?=\s)|\\(?:times|cdot|div)(?![A-Za-z]))
    |(?P<frac>\\[dt]?frac(?![A-Za-z]))
    |(?P<lp>\\left\(|[({\[])
    |(?P<rp>\\right\)|[)}\]])
    |(?P<cmd>\\[A-Za-z]+)
    |(?P<junk>\S))""",
    re.X,
)
_NUM = re.compile(
    r"(?P<cur>[$€£¥]|\\\$)?\s*(?P<int>\d(?:[\d, ]|\{,\})*|)"  # "1,080", "80 000", LaTeX's "1{,}080"
    r"(?:\.(?P<dec>\d+))?(?:\.\.\.|…)?\s*(?P<pct>\\?%|percent)?")
_MIXED = re.compile(r"\D*(\d+)\D+(\d+)/(\d+)")
_ANNOTATION = re.compile(r"<<([^<>\n]*)>>")
_DIGIT, _LINE = re.compile(r"\d"), re.compile(r"[^\n]+")
_RELATION = re.compile(r"[=≈≃~]|approx")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_ALIGNED = re.compile(r"&(?=\s*(?:=|≈|\\approx(?![A-Za-z])))")
_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "·": "*", "⋅": "*", "\\times": "*",
        "\\cdot": "*", "/": "/", "÷": "/", "\\div": "/", "^": "^", "**": "^"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "of": 2, "implicit": 2, "^": 3}
# Words after a number that change its value, or plain English: never its unit.
_NOT_UNITS = frozenset(
    "times plus minus over divided multiplied by of and or than less more fewer per into from to squared cubed "
    "sqrt root log ln sin cos tan exp mod pi dozen dozens hundred hundreds thousand thousands million millions "
    "billion billions trillion half halves third thirds quarter quarters twice double triple percent is are "
    "was were be equals equal gives makes because so then thus hence which that this it he she they we you "
    "the an in on at for with after before if but not there here now also total left remaining only just "
    "about am pm means mean becomes yields costs".split())
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
# Units that convert into one another, as `number` stores them (lower case, one trailing "s" cut).
_MONEY = frozenset("cent pennie penny nickel dime quarter dollar".split())
_MEASURES = _MONEY | frozenset(
    "second sec minute min hour hr day week month year inche inch foot feet yard mile mm cm meter metre km "
    "kilometer ounce oz pound lb gram kg ton tonne cup pint quart gallon liter litre ml teaspoon tablespoon".split())
_PHYSICAL = _MEASURES - _MONEY
_GLUE_BEFORE, _PUNCT = frozenset("([{$\"'“‘=*~`"), frozenset(".,;:?")
_MAX_BITS = 20_000  # larger powers are skipped: exact, but not worth the time


_Tok = NamedTuple("_Tok", [("kind", str), ("start", int), ("end", int), ("text", str)])
_tok = functools.partial(tuple.__new__, _Tok)  # C-level construction: tokenizing is the hot loop
# A number as written: `ulp` is one unit in its last decimal place (0 for integers), `zeros` an integer's
# trailing zeros (its last written place under ≈), `fancy` a percent, decimal, mixed number or thousands
# separator (a notation worth checking), `unit` "apple", "car/row", or "$" for a currency sign.
_Lit = NamedTuple("_Lit", [("value", Fraction), ("ulp", Fraction), ("zeros", int), ("pct", bool),
                           ("fancy", bool), ("unit", "str | None")])


class _NoParse(Exception):
    """No expression at this position: the parser backs off."""


class _Symbolic(Exception):
    """A side holds a variable or a value-changing word: not an arithmetic claim."""


class _Unevaluable(Exception):
    """Parsed, but with no exact rational value to trust."""


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
    if _stepscan is not None and text and (found := _stepscan.check(text)) is not None:
        return StepReport(checked=found[0], skipped=found[1], false=found[2])
    return _check_python(text)


def check_many(texts: Sequence[str | None]) -> StepTally:
    """`check` over many traces (None as empty) at once: the filter's loop, without a report per trace."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"check_many() reads str or None, item {i} is {type(text).__name__}: {text!r:.60}")
    if _stepscan is None:
        found = [None] * len(texts)
        checked = skipped = 0
    else:
        checked, skipped, found = _stepscan.check_many(texts)
    for i, false in enumerate(found):
        if false is None:  # no compiled checker, or a trace it handed back
            report = _check_python(texts[i])
            checked, skipped, found[i] = checked + report.checked, skipped + report.skipped, report.false
    return StepTally(checked=checked, skipped=skipped, false=found)


def _check_python(text: str | None) -> StepReport:
    """`check` in Python: the reference the compiled `_stepscan` must match, and the path where it is missing."""
    if not text or not _DIGIT.search(text):
        return StepReport(checked=0, skipped=0, false=[])
    segments, prose = [], text
    if "<<" in text:
        segments = [(text, m.start(1), m.end(1), True) for m in _ANNOTATION.finditer(text)]
        prose = _ANNOTATION.sub(lambda m: " " * len(m.group()), text)  # same length: offsets hold
    if "&" in prose:  # LaTeX alignment, "12 \times 15 &= 180 \\": a space, so the claim reads on
        prose = _ALIGNED.sub(" ", prose)
    segments += [(prose, *m.span(), False) for m in _LINE.finditer(prose) if _RELATION.search(m.group())]
    checked = skipped = 0
    false: list[str] = []
    for segment in segments:
        c, s, spans = _check_segment(*segment)
        checked, skipped = checked + c, skipped + s
        false.extend(text[a:b] for a, b in spans)
    return StepReport(checked=checked, skipped=skipped, false=false)


def _tokenize(text: str, lo: int, hi: int) -> list[_Tok]:
    """Tokens of text[lo:hi]; adjacent relation signs merge, ranges and improper "5 7/3" become blocks."""
    toks: list[_Tok] = []
    for m in _TOKEN.finditer(text, lo, hi):
        kind = m.lastgroup
        start, end, word = m.start(kind), m.end(), m.group(kind)
        if kind == "mixed":
            _, top, bottom = map(int, _MIXED.match(word).groups())
            kind = "num" if top < bottom else "block"
        elif kind == "sup":  # "5²", "10⁻³": a power written as superscript, split into ^, sign and digits
            toks.append(_tok(("op", start, start, "^")))
            if word[0] == "⁻":
                toks.append(_tok(("op", start, start + 1, "-")))
                start += 1
            kind, word = "num", word.lstrip("⁻").translate(_SUPERSCRIPTS)
        elif word == "**" and (start == lo or text[start - 1].isspace()) != (end == hi or text[end].isspace()):
            continue  # markdown bold, "**3 + 4 = 7** apples", "= **200** - 16": a power is spaced alike on both sides
        elif kind == "rel" and word == "~" and not (toks and toks[-1].kind == "rel"):
            kind = "junk"  # a lone "~" may be a range ("1.5~2.5"); "= ~3.3" is approximate
        elif kind == "rel":
            approx = word not in ("=", "==")
            if toks and toks[-1].kind == "rel":  # "= ~3.3", "= approx 3.3"
                approx, start = approx or toks[-1].text == "≈", toks.pop().start
            word = "≈" if approx else "="
        elif (kind == "num" and len(toks) > 1 and toks[-1].text == "-" and toks[-2].kind == "num"
              and (len(toks) == 2 or toks[-3].kind == "word") and toks[-2].end == toks[-1].start
              and toks[-1].end == start and word.isdigit() and toks[-2].text.isdigit()
              and int(toks[-2].text) < int(word)):
            start, kind = toks[-2].start, "block"  # "Weeks 1-2", "takes 5-10": a range
            del toks[-2:]
        toks.append(_tok((kind, start, end, word)))
    return toks


def _check_segment(text: str, lo: int, hi: int, note: bool) -> tuple[int, int, list[tuple[int, int]]]:
    """Checked count, skipped count and the spans of false claims in text[lo:hi] (a line, or a note)."""
    toks = _tokenize(text, lo, hi)
    parser, checked, false, used, j = _Parser(toks), 0, [], set(), 0
    while j < len(toks):
        t, nxt = toks[j], toks[j + 1] if j + 1 < len(toks) else None
        if t.kind not in ("num", "lp", "frac") and not (  # a claim may also start with "-5"
                t.text in ("-", "−") and nxt is not None and nxt.kind == "num" and nxt.start == t.end):
            j += 1
            continue
        try:
            claim = parser.claim(j)
            if claim is None:
                j = max(j + 1, parser.i)
                continue
            sides, rels, e = claim
            verdict = None
            if not _left_ok(text, toks, j, lo, e):
                if len(rels) > 1:  # "a_5 = 2 + 4 \cdot 3 = 14": the first side is a tail, the rest still claims
                    j = next(k for k in range(j, e) if toks[k] is rels[0]) + 1
                    continue
            elif _right_ok(text, toks, e, hi):
                end = toks[e - 1].end
                verdict = _judge(sides, rels, note, remainder="remain" in text[end:hi], bang=text[end : end + 1] == "!")
        except _Symbolic:
            j += 1
            continue
        except RecursionError:  # "((((...))))" thousands deep: the rest of the line is counted as skipped
            logger.debug("line nested too deeply to parse: %r", text[lo : lo + 80])
            break
        if verdict is not None:
            checked += 1
            used.update(r.start for r in rels)
            if not verdict:
                false.append((toks[j].start, toks[e - 1].end))
        j = e
    skipped = sum(1 for i, t in enumerate(toks) if t.kind == "rel" and t.start not in used and (
        (i and toks[i - 1].kind in ("num", "rp"))
        or (i + 1 < len(toks) and toks[i + 1].kind in ("num", "lp", "frac"))))
    return checked, skipped, false


def _left_ok(text: str, toks: list[_Tok], j: int, lo: int, e: int) -> bool:
    """False when the claim is the tail of something bigger: "n + 1", "3:4", "times 4", "f(2)"."""
    start = toks[j].start
    if start > lo and text[start - 1] not in _GLUE_BEFORE and not text[start - 1].isspace():
        return text[start - 1] == ":" and start - 2 >= lo and text[start - 2].isalpha()  # "Third year:88-22"
    prev, before = toks[j - 1] if j else None, toks[j - 2] if j > 1 else None
    if prev is None:
        return True
    if prev.kind == "op":  # a binary operator whose left operand lies outside the claim
        return before is None or before.kind in ("lp", "rel") or before.text in _PUNCT
    if prev.kind == "word":
        word = prev.text.lower()
        if word in _CONNECTIVES or word in _LABELS or (before is not None and (
                before.kind == "op" or (before.kind == "num" and _is_unit(prev)))):
            return False  # "3 times 4", "Week 2", "25 classmates + his 1 teacher", "6 feet 2 inches"
        if word == "at":  # "90 bulbs at $.50 = $45" prices a count; "at 5 + 18 = 23" computes
            return not (j + 1 < len(toks) and toks[j + 1].kind == "rel")
        return word != "of" or before is None or not (before.kind == "num" or before.text.lower() in _FRACTION_WORDS)
    if prev.kind == "lp":  # "($100*(10/100) = 110": a claim inside a bracket must close it
        return e < len(toks) and toks[e].kind == "rp"
    if prev.text == "." and before is not None and before.kind == "op":
        return False  # ".8 + . 84": a decimal broken by a space
    if prev.text == "," and before is not None and before.kind == "num" and before.end == prev.start:
        return not (len(before.text) <= 3 and len(toks[j].text) == 3)  # "14, 400": a stray space
    if prev.text == ")" and before is not None and before.end == prev.start and (
            (before.kind == "num" and before.text.isdigit()) or (before.kind == "word" and len(before.text) == 1)):
        opener = toks[j - 3] if j > 2 else None  # a list marker: "1) 3 + 4 = 7", "Case 2) ...", "(b) ..."
        if opener is not None and opener.text == "(":
            return j == 3 or toks[j - 4].kind == "word"
        return not any(t.kind == "lp" for t in toks[: j - 2])  # not "(1/2) 278 + 11"
    return prev.kind not in ("num", "block", "rp", "cmd")  # "(1/2) 278 + 11", "5\\star 1 = 9"


def _right_ok(text: str, toks: list[_Tok], e: int, hi: int) -> bool:
    """False when the last side goes on in a way not parsed: "= 2 + n", "= 3:4", "= 8 5%"."""
    end = toks[e - 1].end
    if end < hi and not text[end].isspace():
        c, c2 = text[end], text[end + 1 : end + 2]
        if (c.isalnum() or c in "/^_-−–(" or (c in ".:" and (c2.isdigit() or c2 == "\\"))
                or (c == "," and c2.strip()) or (c == "!" and c2 != "" and (c2.isalnum() or c2 in "=("))):
            return False  # "= 5-year", "= 3:4", "= 3!2", "= 0.\\overline{3}", "= 729,\\!000"
    if e < len(toks) and (toks[e].kind in ("num", "block", "frac") or (toks[e].kind == "lp" and toks[e].start == end)
                          or (e + 1 < len(toks) and _is_unit(toks[e]) and toks[e + 1].kind == "num")):
        return False  # "= 8 5% increases", "= 37 \\frac{1}{2}", "= \\frac{1}{4}\\left(", "= 2 hours 30 minutes"
    return not (e + 1 < len(toks) and toks[e].kind == "op"
                and toks[e + 1].kind in ("num", "lp", "word", "frac", "cmd", "block"))


class _Parser:
    """Precedence climbing over one segment's tokens into ("lit", _Lit), ("neg", a), ("()", a), (op, a, b)."""

    def __init__(self, toks: list[_Tok]):
        self.toks, self.n, self.i, self.first_side = toks, len(toks), 0, True

    def peek(self, k: int = 0) -> _Tok | None:
        return self.toks[self.i + k] if self.i + k < self.n else None

    def claim(self, j: int) -> tuple[list[tuple], list[_Tok], int] | None:
        """Sides and relation tokens of the claim starting at token j, and the index after it."""
        self.i, self.first_side = j, True
        try:
            sides = [self.expr()]
        except _NoParse:
            self.i = j
            return None
        self.first_side, rels = False, []  # "= 1/3 of $150" describes, it does not multiply
        while (t := self.peek()) is not None and t.kind == "rel":
            save, self.i = self.i, self.i + 1
            try:
                sides.append(self.expr())
            except _NoParse:
                self.i = save
                break
            rels.append(t)
        return (sides, rels, self.i) if rels else None

    def expr(self, floor: int = 1) -> tuple:
        """+ - bind loosest, then * / x "of" 2(3), then ^ ** (right-associative)."""
        node = self.unary()
        while (t := self.peek()) is not None and (op := self._op_of(t, node)) is not None and _PREC[op] >= floor:
            save = self.i
            self.i += op != "implicit"
            try:
                rhs = self.expr(_PREC[op] + (op != "^"))
            except _NoParse:
                self.i = save
                break
            node = ("*" if op in ("of", "implicit") else op, node, rhs)
        return node

    def _op_of(self, t: _Tok, left: tuple) -> str | None:
        if t.kind == "op":
            return _OPS.get(t.text)
        if t.kind == "word" and self._op_word(self.i):
            if t.text in ("x", "X"):
                return "*"
            # "of" multiplies after a percent or a written fraction a/b, and only before the first `=`
            part = left[1].pct if left[0] == "lit" else left[0] == "/" and left[1][0] == left[2][0] == "lit"
            return "of" if self.first_side and part else None
        return "implicit" if t.kind == "lp" and t.start == self.toks[self.i - 1].end else None  # 2(3 + 4)

    def _op_word(self, j: int) -> bool:
        """Whether token j is "x" or "of" used as an operator before an operand."""
        return (j + 1 < self.n and self.toks[j].kind == "word" and self.toks[j].text in ("x", "X", "of")
                and self.toks[j + 1].kind in ("num", "lp", "frac"))

    def unary(self) -> tuple:
        if (t := self.peek()) is None or t.text not in ("-", "−"):
            return self.atom()
        self.i += 1
        inner = self.expr(_PREC["^"])  # -2^2 is -(2^2): `_value` refuses it as ambiguous
        return ("lit", inner[1]._replace(value=-inner[1].value)) if inner[0] == "lit" else ("neg", inner)

    def atom(self) -> tuple:
        if (t := self.peek()) is None:
            raise _NoParse
        self.i += 1
        if t.kind == "num":
            node, i, toks = ("lit", self.number(t)), self.i, self.toks
            if (i + 1 < self.n and toks[i].text == "/" and toks[i - 1].kind == toks[i + 1].kind == "num"
                    and toks[i].start == toks[i - 1].end and toks[i + 1].start == toks[i].end
                    and not (i > 1 and toks[i - 2].text in ("^", "**"))
                    and not (i + 2 < self.n and toks[i + 2].text in ("^", "**"))):
                self.i += 2  # "28 / 1/5": a tight 1/5 is one number (but 2^1/2 is left alone)
                node = ("/", node, ("lit", self.number(toks[i + 1])))
            return node
        if t.kind == "op" and t.text == "**":  # markdown bold around a result: "= **7**"
            return self.atom()
        if t.kind == "lp":
            inner = self.expr()
            if (close := self.peek()) is None or close.kind != "rp":
                raise _NoParse
            self.i += 1
            return ("()", inner)
        if t.kind == "frac" and (brace := self.peek()) is not None and brace.kind == "lp":
            top = self.atom()
            if (brace := self.peek()) is not None and brace.kind == "lp":
                return ("/", top, self.atom())
        self.i -= 1
        raise _NoParse

    def number(self, t: _Tok) -> _Lit:
        """The literal at t and its unit: up to two words, then a rate ("cars/row", "$5 per hour")."""
        lit, toks, start = _literal(t.text), self.toks, self.i
        j = start
        while j < self.n and j - start < 2 and _is_unit(toks[j]):
            j += 1
        rate = self._rate(j)
        j += 2 if rate else 0
        if j == start and (j >= self.n or toks[j].kind != "word"):
            return lit  # the common case: no word after the number
        nxt, after, op_word = self.peek(j - start), self.peek(j - start + 1), self._op_word(j)
        if nxt is not None and nxt.kind == "word" and not op_word:
            if nxt.start == toks[j - 1].end or (after is not None and after.kind in ("op", "rel")):
                raise _Symbolic(nxt.text)  # "2x", "3 n + 1", "2 dozen = 24"
        if j > start and nxt is not None and nxt.text in ("/", "^", "**") and nxt.start == toks[j - 1].end:
            raise _Symbolic(toks[j - 1].text)  # "5 minutes/100 meters", "12 cm^2"
        named = toks[start].text.lower().rstrip("s") if j > start + (2 if rate else 0) else ""
        # "$ 45 kg + 12 kg": a "$" before a measure opens LaTeX math; it is no currency
        unit = named if lit.unit == "$" and named in _PHYSICAL else lit.unit or named
        if j > start and (rate == "/" or (nxt is not None and (nxt.kind in ("op", "rel") or op_word))):
            self.i = j  # "5 apples + 3 apples": the units sit inside the expression
        return lit._replace(unit=unit + ("/" + toks[j - 1].text.lower().rstrip("s") if rate else "") or None)

    def _rate(self, j: int) -> str | None:
        """ "/" or "per" when tokens j, j+1 make a rate after a number or unit: "cars/row", "per hour"."""
        if j + 1 >= self.n or not _is_unit(self.toks[j + 1]):
            return None
        sep, word = self.toks[j], self.toks[j + 1]
        if sep.text == "/" and sep.start == self.toks[j - 1].end and word.start == sep.end:
            return "/"
        return "per" if sep.kind == "word" and sep.text.lower() == "per" else None


def _is_unit(t: _Tok) -> bool:
    return t.kind == "word" and len(t.text) > 1 and t.text.lower() not in _NOT_UNITS


@functools.lru_cache(maxsize=8192)
def _literal(s: str) -> _Lit:
    """Value and written precision of a number token such as "$1,080.50", "12.5%" or "1 1/2"."""
    m = _NUM.match(s)
    currency = "$" if m["cur"] else None
    if "/" in s:  # a mixed number; the tokenizer made sure it is proper
        whole, top, bottom = map(int, _MIXED.match(s).groups())
        return _Lit(Fraction(whole * bottom + top, bottom), Fraction(0), 0, False, True, currency)
    digits, dec = re.sub(r"[, {}]", "", m["int"]) or "0", m["dec"] or ""
    value, ulp = Fraction(int(digits + dec), 10 ** len(dec)), Fraction(1, 10 ** len(dec)) if dec else Fraction(0)
    zeros = len(digits) - len(digits.rstrip("0")) if not dec and digits.strip("0") else 0
    if m["pct"]:
        value, ulp = value / 100, ulp / 100
    fancy = bool(m["pct"] or dec or "," in m["int"] or " " in m["int"].strip())
    return _Lit(value, ulp, zeros, bool(m["pct"]), fancy, currency)


def _value(node: tuple, label: bool = False) -> Fraction:
    """Exact value of a node (with `label`, p% counts as p); _Unevaluable when there is none to trust."""
    kind = node[0]
    if kind == "lit":
        return node[1].value * 100 if label and node[1].pct else node[1].value
    if kind == "()" or kind == "neg":
        if kind == "neg" and node[1][0] == "^":  # "-2^2": -4 by convention, 4 for many writers
            raise _Unevaluable("unary minus before a power")
        return _value(node[1], label) * (-1 if kind == "neg" else 1)
    a, b = _value(node[1], label), _value(node[2], label)
    if kind in ("+", "-"):
        la, lb = node[1][1] if node[1][0] == "lit" else None, node[2][1] if node[2][0] == "lit" else None
        if la and lb and (la.pct != lb.pct or (la.unit != lb.unit and {la.unit, lb.unit} <= _MEASURES | {"$"})):
            raise _Unevaluable("a percent added to a number, or different measures added")
        return a + b if kind == "+" else a - b
    if kind == "/" and b == 0:
        raise _Unevaluable("division by zero")
    return a * b if kind == "*" else a / b if kind == "/" else _power(a, b)


def _power(a: Fraction, b: Fraction) -> Fraction:
    """a ** b exactly, or _Unevaluable when the result is huge or irrational."""
    if b.denominator != 1:  # rational only when numerator and denominator are perfect q-th powers
        q = b.denominator
        small = a >= 0 and q <= 64 and max(a.numerator, a.denominator).bit_length() < 1000  # floats can take it
        roots = [next((r for r in range(max(0, round(n ** (1 / q)) - 1), round(n ** (1 / q)) + 2) if r**q == n), None)
                 for n in (a.numerator, a.denominator)] if small else [None]
        if None in roots:
            raise _Unevaluable("a fractional power that is not rational")  # values may be huge: not shown
        a, b = Fraction(roots[0], roots[1]), Fraction(b.numerator)
    e = int(b)
    bits = max(a.numerator.bit_length(), a.denominator.bit_length())
    if (a == 0 and e < 0) or (abs(e) > 1 and bits * abs(e) > _MAX_BITS):
        raise _Unevaluable("zero to a negative power, or a power too large to evaluate")
    return a**e


def _judge(sides: list[tuple], rels: list[_Tok], note: bool, remainder: bool = False,
           bang: bool = False) -> bool | None:
    """True if every checked link holds, False if one fails, None if there was nothing to check.

    `bang`: the last side is followed by "!", an exclamation or a factorial ("3 * 2 * 1 = 3!"): both count.
    """
    lits = [s[1] if s[0] == "lit" else None for s in sides]
    if not note and all(lit is not None and not lit.fancy for lit in lits):
        return None  # in prose "4 = 4" restates a number; a calculator note "<<4=5>>" is a claim
    try:
        readings = [[(_value(s), lit)] + ([(_value(s, label=True), lit and lit._replace(
            value=lit.value * 100, ulp=lit.ulp * 100, pct=False))] if _walk(s, lambda x: x.pct) else [])
            for s, lit in zip(sides, lits)]  # "p%" also read as the label p
        if bang and lits[-1] is None:
            raise _Unevaluable("an expression before '!': a factorial, or an exclamation")
        if bang and lits[-1].value.denominator == 1 and 0 <= lits[-1].value <= 1000 and not lits[-1].pct:
            readings[-1].append((Fraction(math.factorial(int(lits[-1].value))), None))  # larger: no side is that big
        checked = False
        for i, rel in enumerate(rels):
            a, b = lits[i], lits[i + 1]
            if i == 0 and a is not None and b is None and (not a.fancy or (a.unit or "$") != "$"):
                continue  # a label: "Area of 4 bedrooms = 121 * 4", "2 kg = 2 * 1000"
            if _converts(sides[i], a, sides[i + 1], b) or _skips(sides, lits, i, readings[i][0][0], remainder):
                continue
            checked = True
            if not any(_holds(x, la, y, lb, rel.text == "≈") for x, la in readings[i] for y, lb in readings[i + 1]):
                return False
    except _Unevaluable as err:
        logger.debug("skipped claim: %s", err)
        return None
    return True if checked else None


def _walk(node: tuple, test) -> bool:
    """Whether any literal in node passes test."""
    return test(node[1]) if node[0] == "lit" else any(_walk(child, test) for child in node[1:])


def _converts(side_a: tuple, a: _Lit | None, side_b: tuple, b: _Lit | None) -> bool:
    """Whether a link changes units ("1 hour = 60 minutes", "$1 / 2 = 50 cents"): not checked."""
    if a is not None and b is not None:
        return a.unit != b.unit
    bare, other = (a, side_b) if a is not None else (b, side_a)
    if bare is None or bare.unit is None:
        return False
    if bare.unit == "$":
        return _walk(other, lambda x: x.unit in _MONEY)
    return bare.unit in _MEASURES and _walk(other, lambda x: x.unit is not None) and not _walk(
        other, lambda x: x.unit is not None and bare.unit in x.unit.split("/"))


def _skips(sides: list[tuple], lits: list, i: int, before: Fraction, remainder: bool) -> bool:
    """Whether link i is not checked: a running total ("$3/2 = $1.50 + $3.00 = $4.50" restarts at 1.50)
    before a further link, or a quotient "13 / 6 = 2" on a line that speaks of a remainder."""
    first, side, result = sides[i + 1], sides[i], lits[i + 1]
    while first[0] not in ("lit", "neg"):
        first = first[1]
    if i + 2 < len(sides) and sides[i + 1][0] != "lit" and first[0] == "lit" and first[1].value == before:
        return True
    if not remainder or side[0] != "/" or result is None or result.value.denominator != 1:
        return False
    a, b = _value(side[1]), _value(side[2])
    return a.denominator == b.denominator == 1 and b > 0 and a // b == result.value


def _holds(x: Fraction, a: _Lit | None, y: Fraction, b: _Lit | None, approx: bool) -> bool:
    """Whether x = y (or x ≈ y) given how the bare sides a and b were written."""
    if x == y:
        return True
    if approx:
        places = [lit.ulp or Fraction(10**lit.zeros) / (100 if lit.pct else 1) for lit in (a, b) if lit]
        return abs(x - y) <= max([max(abs(x), abs(y)) / 100] + [u / 2 for u in places])
    for value, shown, lit in ((x, y, b), (y, x, a)):  # `shown` is `value` rounded or truncated to lit's places
        gap = abs(value - shown)
        if lit is not None and lit.ulp and (
                gap <= lit.ulp / 2 or (gap < lit.ulp and abs(shown) < abs(value) and shown * value >= 0)):
            return True
    return False
