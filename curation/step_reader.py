"""Reading arithmetic claims: tokens of one line, the numbers as written, and the syntax tree of each side.

`tokenize` splits a line into numbers, words, operators, relation signs and brackets; `Parser.claim` reads
`side REL side [REL side ...]` at a token into small frozen nodes (`Lit`, `Neg`, `Paren`, `BinOp`); `value`
evaluates a node exactly with `Fraction`. What a claim means in its sentence is `curation.steps`' business.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

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
    re.VERBOSE,
)
_NUM = re.compile(
    r"(?P<cur>[$€£¥]|\\\$)?\s*(?P<int>\d(?:[\d, ]|\{,\})*|)"  # "1,080", "80 000", LaTeX's "1{,}080"
    r"(?:\.(?P<dec>\d+))?(?:\.\.\.|…)?\s*(?P<pct>\\?%|percent)?")
_MIXED = re.compile(r"\D*(\d+)\D+(\d+)/(\d+)")
_SEPARATORS = re.compile(r"[, {}]")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "·": "*", "⋅": "*", "\\times": "*",
       "\\cdot": "*", "/": "/", "÷": "/", "\\div": "/", "^": "^", "**": "^"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "of": 2, "implicit": 2, "^": 3}
# Words after a number that change its value, or plain English: never its unit.
NOT_UNITS = frozenset(
    "times plus minus over divided multiplied by of and or than less more fewer per into from to squared cubed "
    "sqrt root log ln sin cos tan exp mod pi dozen dozens hundred hundreds thousand thousands million millions "
    "billion billions trillion half halves third thirds quarter quarters twice double triple percent is are "
    "was were be equals equal gives makes because so then thus hence which that this it he she they we you "
    "the an in on at for with after before if but not there here now also total left remaining only just "
    "about am pm means mean becomes yields costs".split())
# Units that convert into one another, as `Parser.number` stores them (lower case, one trailing "s" cut).
MONEY = frozenset("cent pennie penny nickel dime quarter dollar".split())
MEASURES = MONEY | frozenset(
    "second sec minute min hour hr day week month year inche inch foot feet yard mile mm cm meter metre km "
    "kilometer ounce oz pound lb gram kg ton tonne cup pint quart gallon liter litre ml teaspoon tablespoon".split())
_PHYSICAL = MEASURES - MONEY
MAX_DIGITS = 4300  # Python's own limit on int(str); a longer number is skipped, never converted
MAX_BITS = 20_000  # larger powers are skipped: exact, but not worth the time
MAX_DEPTH = 50  # bracket nesting; MATH-500's deepest LaTeX nests under 10
_MAX_VALUE_BITS = 4 * MAX_BITS  # any larger intermediate value is skipped too: a line's cost stays bounded



class Tok(NamedTuple):
    """A token: its kind ("num", "word", "op", "rel", "lp", ...), where it starts and ends, and its text."""

    kind: str
    start: int
    end: int
    text: str


_tok = functools.partial(tuple.__new__, Tok)  # C-level construction: tokenizing is the hot loop


class NoParse(Exception):
    """No expression at this position: the parser backs off."""


class TooDeep(Exception):
    """Brackets nested deeper than `MAX_DEPTH`: no step anyone writes, and re-parsing each level costs depth squared."""


class Symbolic(Exception):
    """A side holds a variable, a value-changing word or an unreadable number: not an arithmetic claim."""


class Unevaluable(Exception):
    """Parsed, but with no exact rational value to trust."""


@dataclass(frozen=True, slots=True)
class Lit:
    """A number as written: `ulp` is one unit in its last decimal place (0 for an integer), `zeros` an integer's
    trailing zeros (its last written place under ≈), `fancy` a percent, decimal, mixed number or thousands
    separator (a notation worth checking), `unit` "apple", "car/row", or "$" for a currency sign."""

    value: Fraction
    ulp: Fraction
    zeros: int
    pct: bool
    fancy: bool
    unit: str | None


@dataclass(frozen=True, slots=True)
class Neg:
    """A minus before something other than a number: "-(2 + 3)", "-2^2"."""

    inner: Node


@dataclass(frozen=True, slots=True)
class Paren:
    """A bracketed expression: "(2 + 3)"."""

    inner: Node


@dataclass(frozen=True, slots=True)
class BinOp:
    """`op` ("+", "-", "*", "/" or "^") applied to two nodes."""

    op: str
    left: Node
    right: Node


Node = Lit | Neg | Paren | BinOp


def tokenize(text: str, lo: int, hi: int) -> list[Tok]:
    """Tokens of text[lo:hi]; adjacent relation signs merge, ranges and improper "5 7/3" become blocks."""
    toks: list[Tok] = []
    stop = hi
    while stop > lo and text[stop - 1].isspace():
        stop -= 1
    # trailing spaces would make each start scan to `hi` and fail (quadratic); one is kept for "(?=\s)"
    for m in _TOKEN.finditer(text, lo, min(hi, stop + 1)):
        kind = m.lastgroup
        start, end, word = m.start(kind), m.end(), m.group(kind)
        if kind == "mixed":
            _, top, bottom = _MIXED.match(word).groups()
            kind = "num" if _less(top, bottom) else "block"
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
        elif kind == "num" and toks and toks[-1].text == "-" and _closes_range(toks, start, word):
            start, kind = toks[-2].start, "block"  # "Weeks 1-2", "takes 5-10": a range
            del toks[-2:]
        toks.append(_tok((kind, start, end, word)))
    return toks


def _less(a: str, b: str) -> bool:
    """Whether the digit string a is below b; too long to convert counts as not."""
    return len(a) <= MAX_DIGITS and len(b) <= MAX_DIGITS and int(a) < int(b)


def _closes_range(toks: list[Tok], start: int, word: str) -> bool:
    """Whether a number ends a range "1-2" (tight, rising, after a word or alone): "Weeks 1-2", "takes 5-10"."""
    if len(toks) < 2 or toks[-2].kind != "num":
        return False
    return ((len(toks) == 2 or toks[-3].kind == "word") and toks[-2].end == toks[-1].start and toks[-1].end == start
            and word.isdigit() and toks[-2].text.isdigit() and _less(toks[-2].text, word))


@functools.lru_cache(maxsize=8192)
def literal(s: str) -> Lit:
    """Value and written precision of a number token such as "$1,080.50", "12.5%" or "1 1/2"."""
    m = _NUM.match(s)
    currency = "$" if m["cur"] else None
    if "/" in s:  # a mixed number; the tokenizer made sure it is proper (and short enough to convert)
        parts = _MIXED.match(s).groups()
        if len(parts[0]) > MAX_DIGITS:
            raise Symbolic(f"a number of {len(parts[0])} digits")
        whole, top, bottom = map(int, parts)
        return Lit(Fraction(whole * bottom + top, bottom), Fraction(0), 0, False, True, currency)
    digits, dec = _SEPARATORS.sub("", m["int"]) or "0", m["dec"] or ""
    if len(digits) + len(dec) > MAX_DIGITS:
        raise Symbolic(f"a number of {len(digits) + len(dec)} digits")
    value, ulp = Fraction(int(digits + dec), 10 ** len(dec)), Fraction(1, 10 ** len(dec)) if dec else Fraction(0)
    zeros = len(digits) - len(digits.rstrip("0")) if not dec and digits.strip("0") else 0
    if m["pct"]:
        value, ulp = value / 100, ulp / 100
    fancy = bool(m["pct"] or dec or "," in m["int"] or " " in m["int"].strip())
    return Lit(value, ulp, zeros, bool(m["pct"]), fancy, currency)


def is_unit(t: Tok) -> bool:
    """Whether token t can be a unit after a number: "apples", "cm", not "of" or "times"."""
    return t.kind == "word" and len(t.text) > 1 and t.text.lower() not in NOT_UNITS


class Parser:
    """Precedence climbing over one line's tokens: + - bind loosest, then * / x "of" 2(3), then ^ **."""

    def __init__(self, toks: list[Tok]):
        self.toks, self.n, self.i, self.first_side, self.depth = toks, len(toks), 0, True, 0

    def claim(self, j: int) -> tuple[list[Node], list[int], int] | None:
        """Sides of the claim starting at token j, the indices of its relation signs, and the index after it."""
        self.i, self.first_side, self.depth = j, True, 0
        try:
            sides = [self.expr()]
        except NoParse:
            self.i = j
            return None
        self.first_side, rels = False, []  # "= 1/3 of $150" describes, it does not multiply
        while self.i < self.n and self.toks[self.i].kind == "rel":
            save, self.i = self.i, self.i + 1
            try:
                sides.append(self.expr())
            except NoParse:
                self.i = save
                break
            rels.append(save)
        return (sides, rels, self.i) if rels else None

    def expr(self, floor: int = 1) -> Node:
        """An expression whose operators bind at least as tightly as `floor`."""
        node = self.unary()
        while self.i < self.n and (op := self._op_at(node)) is not None and _PREC[op] >= floor:
            save = self.i
            self.i += op != "implicit"
            try:
                rhs = self.expr(_PREC[op] + (op != "^"))  # ^ is right-associative
            except NoParse:
                self.i = save
                break
            node = BinOp("*" if op in ("of", "implicit") else op, node, rhs)
        return node

    def _op_at(self, left: Node) -> str | None:
        """The operator at the cursor, given the operand before it; None when there is none."""
        t = self.toks[self.i]
        if t.kind == "op":
            return OPS.get(t.text)
        if t.kind == "word" and self.op_word(self.i):
            if t.text in ("x", "X"):
                return "*"
            return "of" if self.first_side and _a_part(left) else None
        return "implicit" if t.kind == "lp" and t.start == self.toks[self.i - 1].end else None  # 2(3 + 4)

    def op_word(self, j: int) -> bool:
        """Whether token j is "x" or "of" used as an operator before an operand."""
        return (j + 1 < self.n and self.toks[j].kind == "word" and self.toks[j].text in ("x", "X", "of")
                and self.toks[j + 1].kind in ("num", "lp", "frac"))

    def unary(self) -> Node:
        """A minus sign before an operand: "-5" is a negative number, "-2^2" a negated power."""
        if self.i >= self.n or self.toks[self.i].text not in ("-", "−"):
            return self.atom()
        self.i += 1
        inner = self.expr(_PREC["^"])
        if isinstance(inner, Lit):
            return Lit(-inner.value, inner.ulp, inner.zeros, inner.pct, inner.fancy, inner.unit)
        return Neg(inner)

    def atom(self) -> Node:
        """A number (with its unit), a bracketed expression or a LaTeX fraction."""
        if self.i >= self.n:
            raise NoParse
        t, toks = self.toks[self.i], self.toks
        self.i += 1
        if t.kind == "num":
            node, self.i = self.number(t, self.i)
            i = self.i
            if (i + 1 < self.n and toks[i].text == "/" and toks[i - 1].kind == toks[i + 1].kind == "num"
                    and toks[i].start == toks[i - 1].end and toks[i + 1].start == toks[i].end
                    and not (i > 1 and toks[i - 2].text in ("^", "**"))
                    and not (i + 2 < self.n and toks[i + 2].text in ("^", "**"))):
                # "28 / 1/5": a tight 1/5 is one number (but 2^1/2 is left alone)
                bottom, self.i = self.number(toks[i + 1], i + 2)
                node = BinOp("/", node, bottom)
            return node
        if t.kind == "op" and t.text == "**":  # markdown bold around a result: "= **7**"
            return self.atom()
        if t.kind == "lp":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise TooDeep
            inner = self.expr()
            self.depth -= 1
            if self.i >= self.n or toks[self.i].kind != "rp":
                raise NoParse
            self.i += 1
            return Paren(inner)
        if t.kind == "frac" and self.i < self.n and toks[self.i].kind == "lp":
            top = self.atom()
            if self.i < self.n and toks[self.i].kind == "lp":
                return BinOp("/", top, self.atom())
        self.i -= 1
        raise NoParse

    def number(self, t: Tok, start: int) -> tuple[Lit, int]:
        """The literal t with its unit (up to two words, then a rate: "cars/row", "$5 per hour"), and the
        index after it: `start` (the token after t) unless the units sit inside the expression."""
        lit, toks, j = literal(t.text), self.toks, start
        while j < self.n and j - start < 2 and is_unit(toks[j]):
            j += 1
        rate = self._rate(j)
        j += 2 if rate else 0
        if j == start and (j >= self.n or toks[j].kind != "word"):
            return lit, start  # the common case: no word after the number
        nxt = toks[j] if j < self.n else None
        after, op_word = toks[j + 1] if j + 1 < self.n else None, self.op_word(j)
        if nxt is not None and nxt.kind == "word" and not op_word:
            if nxt.start == toks[j - 1].end or (after is not None and after.kind in ("op", "rel")):
                raise Symbolic(nxt.text)  # "2x", "3 n + 1", "2 dozen = 24"
        if j > start and nxt is not None and nxt.text in ("/", "^", "**") and nxt.start == toks[j - 1].end:
            raise Symbolic(toks[j - 1].text)  # "5 minutes/100 meters", "12 cm^2"
        named = toks[start].text.lower().rstrip("s") if j > start + (2 if rate else 0) else ""
        # "$ 45 kg + 12 kg": a "$" before a measure opens LaTeX math; it is no currency
        unit = named if lit.unit == "$" and named in _PHYSICAL else lit.unit or named
        unit += "/" + toks[j - 1].text.lower().rstrip("s") if rate else ""
        inside = j > start and (rate == "/" or (nxt is not None and (nxt.kind in ("op", "rel") or op_word)))
        # "5 apples + 3 apples": the units sit inside the expression
        return Lit(lit.value, lit.ulp, lit.zeros, lit.pct, lit.fancy, unit or None), j if inside else start

    def _rate(self, j: int) -> str | None:
        """ "/" or "per" when tokens j, j+1 make a rate after a number or unit: "cars/row", "per hour"."""
        if j + 1 >= self.n or not is_unit(self.toks[j + 1]):
            return None
        sep, word = self.toks[j], self.toks[j + 1]
        if sep.text == "/" and sep.start == self.toks[j - 1].end and word.start == sep.end:
            return "/"
        return "per" if sep.kind == "word" and sep.text.lower() == "per" else None


def _a_part(node: Node) -> bool:
    """Whether "of" after node multiplies: after a percent or a written fraction ("25% of 80", "3/4 of 12")."""
    if isinstance(node, Lit):
        return node.pct
    return isinstance(node, BinOp) and node.op == "/" and isinstance(node.left, Lit) and isinstance(node.right, Lit)


def has_lit(node: Node, test) -> bool:
    """Whether any literal in node passes test."""
    if isinstance(node, Lit):
        return test(node)
    if isinstance(node, BinOp):
        return has_lit(node.left, test) or has_lit(node.right, test)
    return has_lit(node.inner, test)


def leftmost(node: Node) -> Lit | Neg:
    """The first literal (or negation) of node as written: 1.50 in "1.50 + 3"."""
    while isinstance(node, (BinOp, Paren)):
        node = node.left if isinstance(node, BinOp) else node.inner
    return node


def value(node: Node, label: bool = False) -> Fraction:
    """Exact value of a node (with `label`, p% counts as p); Unevaluable when there is none to trust."""
    if isinstance(node, Lit):
        return node.value * 100 if label and node.pct else node.value
    if isinstance(node, Paren):
        return value(node.inner, label)
    if isinstance(node, Neg):
        if isinstance(node.inner, BinOp) and node.inner.op == "^":  # "-2^2": -4 by convention, 4 for many
            raise Unevaluable("unary minus before a power")
        return -value(node.inner, label)
    a, b, op = value(node.left, label), value(node.right, label), node.op
    if op in ("+", "-"):
        la, lb = node.left, node.right
        if isinstance(la, Lit) and isinstance(lb, Lit) and (
                la.pct != lb.pct or (la.unit != lb.unit and {la.unit, lb.unit} <= MEASURES | {"$"})):
            raise Unevaluable("a percent added to a number, or different measures added")
        result = a + b if op == "+" else a - b
    elif op == "/" and b == 0:
        raise Unevaluable("division by zero")
    else:
        result = a * b if op == "*" else a / b if op == "/" else power(a, b)
    if max(result.numerator.bit_length(), result.denominator.bit_length()) > _MAX_VALUE_BITS:
        raise Unevaluable("a value too large to evaluate")
    return result


@functools.lru_cache(maxsize=1024)
def power(a: Fraction, b: Fraction) -> Fraction:
    """a ** b exactly, or Unevaluable when the result is huge or irrational."""
    if b.denominator != 1:  # rational only when numerator and denominator are perfect q-th powers
        q = b.denominator
        small = a >= 0 and q <= 64 and max(a.numerator, a.denominator).bit_length() < 1000  # floats can take it
        roots = [next((r for r in range(max(0, round(n ** (1 / q)) - 1), round(n ** (1 / q)) + 2) if r**q == n), None)
                 for n in (a.numerator, a.denominator)] if small else [None]
        if None in roots:
            raise Unevaluable("a fractional power that is not rational")  # values may be huge: not shown
        a, b = Fraction(roots[0], roots[1]), Fraction(b.numerator)
    e = int(b)
    bits = max(a.numerator.bit_length(), a.denominator.bit_length())
    if (a == 0 and e < 0) or (abs(e) > 1 and bits * abs(e) > MAX_BITS):
        raise Unevaluable("zero to a negative power, or a power too large to evaluate")
    return a**e


def shown_as(exact: Fraction, shown: Fraction, lit: Lit | None) -> bool:
    """Whether `shown`, written as lit, is `exact` rounded or truncated to lit's decimal places: 2/3 as 0.67
    or 0.66 (an integer is exact)."""
    if lit is None or not lit.ulp:
        return False
    gap = abs(exact - shown)
    return gap <= lit.ulp / 2 or (gap < lit.ulp and abs(shown) < abs(exact) and shown * exact >= 0)
