"""Verbal arithmetic claims: "the sum of 5 and 6 is 11", "the gcd of 8 and 2 is 2", "3 times 4 is 12".

A claim names an operation on two plain numbers (sum, difference, product, quotient, remainder, greatest
common divisor, least common multiple; "X times / plus / minus / divided by Y"; the square or square root of
X), then "is", "equals", "is equal to", "was" or "gives", then a plain number. It is checked exactly; a
written decimal may round or truncate ("the square root of 2 is 1.41"); "difference" may be either order,
a quotient of whole numbers may be whole ("the quotient of 17 and 5 is 3"). Skipped (counted, not
checked): a claim that continues an operation ("twice the sum of 2 and 3 is 10", "1 + 3 times 4 is 13"), a
result that goes on ("is 12 more", "is 5%", "is 3 + 1"), and what has no exact value (gcd of 2.5, a root of
a negative number, division by zero).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from curation.step_reader import MAX_DIGITS, Lit, literal, shown_as

_NUMBER = r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_GAP = r"[^\S\n]+"  # spaces within one line


def _words(*names: str) -> str:
    """Alternatives for names, each also capitalized ("Sum", "GCD"), spaces as `_GAP`: re.I is ~7x slower."""
    spellings = (v for n in names for v in (n, n.capitalize(), n.upper() if len(n) < 4 else n))
    return "|".join(dict.fromkeys(spellings)).replace(" ", _GAP)


_CLAIM = re.compile(
    rf"""(?P<the>\b[Tt]he{_GAP})?
    (?:\b(?P<fn>{_words("sum", "difference", "product", "quotient", "remainder", "greatest common divisor",
                        "greatest common factor", "highest common factor", "gcd", "gcf", "hcf",
                        "least common multiple", "lowest common multiple", "lcm")})
        {_GAP}(?:of|between|when){_GAP}(?P<a>{_NUMBER}){_GAP}(?:and|(?:is{_GAP})?divided{_GAP}by){_GAP}(?P<b>{_NUMBER})
      |\b(?P<root>{_words("square root", "square")}){_GAP}of{_GAP}(?P<x>{_NUMBER})
      |(?<![\w.,$-])(?P<left>{_NUMBER}){_GAP}(?P<op>times|plus|minus|divided{_GAP}by|multiplied{_GAP}by)
        {_GAP}(?P<right>{_NUMBER}))
    {_GAP}(?:is{_GAP}equal{_GAP}to|is|equals|was|gives){_GAP}(?P<result>{_NUMBER})""",
    re.VERBOSE,
)
_VERBS = (" is ", "equals", " was ", "gives")
# Words that open or join a verbal claim, for a quick look before the regex.
_HINTS = ("sum", "differ", "product", "quotient", "remainder", "common", "gcd", "gcf", "hcf", "lcm", "square",
          "times", "plus", "minus", "divided", "multiplied")
# A word before the claim that takes it as an operand: "twice the sum of 2 and 3", "1 plus 3 times 4".
_CONTINUES = frozenset(
    "times plus minus over by than into from divided multiplied per twice thrice double triple half less more "
    "fewer squared cubed add adding subtract subtracting multiply multiplying divide dividing x of and or to "
    "with".split())
# A word after the result that changes it: "is 12 more than", "is 5 percent", "is 3 times 4".
_RESULT_GOES_ON = frozenset(
    "times plus minus over divided multiplied more less fewer than percent of x to or squared cubed dozen "
    "hundred thousand million billion half".split())
_GCD = frozenset(("greatest common divisor", "greatest common factor", "highest common factor", "gcd", "gcf", "hcf"))
_RESULT_TAIL = re.compile(r"[^\S\n]*(?P<op>[-+*/×÷^·=<>≈~]\s*[\d(.$])?(?P<word>[A-Za-z]+)?")


def _mentions_one(text: str) -> bool:
    """Whether text holds a word that opens or joins a verbal claim ("sum", "times", "gcd", ...)."""
    low = text.lower()
    return any(word in low for word in _HINTS)


def check(prose: str) -> tuple[int, int, list[tuple[int, int]]]:
    """Checked count, skipped count and the spans of false verbal claims in prose."""
    checked = skipped = 0
    false: list[tuple[int, int]] = []
    for m in _claims(prose):
        remainder = prose.find("remain", m.end(), m.endpos) >= 0  # "17 divided by 5 is 3, remainder 2"
        verdict = _verdict(m, remainder) if _stands_alone(prose, m) and _result_ends(prose, m) else None
        if verdict is None:
            skipped += 1
        else:
            checked += 1
            if not verdict:
                false.append(m.span())
    return checked, skipped, false


def _claims(prose: str):
    """The verbal claims' matches, line by line; the regex runs only on lines with a hint and a verb."""
    if not _mentions_one(prose):
        return
    start = 0
    for line in prose.split("\n"):
        end = start + len(line)
        low = line.lower()
        if any(word in low for word in _HINTS) and any(verb in low for verb in _VERBS):
            yield from _CLAIM.finditer(prose, start, end)
        start = end + 1


def _stands_alone(prose: str, m: re.Match) -> bool:
    """Whether nothing before the claim (an operator, a digit, a word such as "twice") takes it as an
    operand: not "twice the sum of 2 and 3 is 10"."""
    before = prose[max(0, m.start() - 40) : m.start()]
    before = before[before.rfind("\n") + 1 :].rstrip()  # within the claim's line
    if before.endswith("**"):  # markdown bold closes: "**Step 2:** the sum of ..."
        before = before[:-2].rstrip()
    if before in ("", "-", "*", "•", "+"):  # the line, or a bullet, opens with the claim
        return True
    if before[-1].isdigit() or before[-1] in "+-−*/×÷^·=(%$":
        return False
    word = re.search(r"([A-Za-z]+)\Z", before[-20:])
    return word is None or word.group(1).lower() not in _CONTINUES


def _result_ends(prose: str, m: re.Match) -> bool:
    """Whether the stated result ends where it was read (no operator, %, ratio or "more" after it): not
    "is 12 more than 3"."""
    end = m.end()
    c, c2 = prose[end : end + 1], prose[end + 1 : end + 2]
    if c and (c.isalnum() or c in "%/^(_" or (c in ".,:" and c2.isdigit())
              or (c == "!" and c2 != "" and (c2.isalnum() or c2 in "=("))):
        return False  # "is 5%", "is 3:4", "is 3!2"
    tail = _RESULT_TAIL.match(prose, end)
    return tail["op"] is None and (tail["word"] is None or tail["word"].lower() not in _RESULT_GOES_ON)


def _verdict(m: re.Match, remainder: bool) -> bool | None:
    """Whether the claim holds; None when it has no exact value to compare. With `remainder` (the line
    speaks of one after the claim) a whole quotient holds too: "17 divided by 5 is 3, remainder 2"."""
    texts = [t for t in (m["a"], m["b"], m["x"], m["left"], m["right"]) if t is not None]
    if any(len(t) > MAX_DIGITS for t in texts + [m["result"]]):
        return None
    args = [literal(t.replace("-", "")).value * (-1 if t.startswith("-") else 1) for t in texts]
    shown = literal(m["result"].replace("-", ""))
    result = shown.value * (-1 if m["result"].startswith("-") else 1)
    name = " ".join((m["fn"] or m["root"] or m["op"]).lower().split())
    if name == "square root":
        return _is_root(args[0], result, shown)
    exact = _values(name, *args, remainder) if name != "square" else [args[0] ** 2]
    if exact is None:
        return None
    if m.string[m.end() : m.end() + 1] == "!" and result.denominator == 1 and 0 <= result <= 1000:
        exact_or_bang = math.factorial(int(result))  # "is 6!": an exclamation, or a factorial
        if exact_or_bang in exact:
            return True
    return any(x == result or shown_as(x, result, shown) for x in exact)


def _values(name: str, a: Fraction, b: Fraction, remainder: bool) -> list[Fraction] | None:
    """The values the operation may name ("difference" either way round); None where it has none."""
    whole = a.denominator == b.denominator == 1
    if name in ("sum", "plus"):
        return [a + b]
    if name in ("difference", "minus"):
        return [a - b, b - a] if name == "difference" else [a - b]
    if name in ("product", "times", "multiplied by"):
        return [a * b]
    if name in ("quotient", "divided by", "remainder") and b == 0:
        return None
    if name in ("quotient", "divided by"):
        return [a / b, Fraction(a // b)] if whole and b > 0 and (name == "quotient" or remainder) else [a / b]
    if not whole or a < 0 or b < 0:
        return None  # remainders, divisors and multiples of whole non-negative numbers only
    if name == "remainder":
        return [a % b]
    gcd = math.gcd(int(a), int(b))
    if name in _GCD:
        return [Fraction(gcd)]
    return [Fraction(int(a) * int(b) // gcd) if gcd else Fraction(0)]  # the least common multiple


def _is_root(x: Fraction, z: Fraction, shown: Lit) -> bool | None:
    """Whether z is the square root of x, exactly or as x's root rounded or truncated to z's places."""
    if x < 0:
        return None
    if z < 0:
        return False
    if not shown.ulp:
        return z * z == x
    half = shown.ulp / 2
    rounded = max(z - half, Fraction(0)) ** 2 <= x <= (z + half) ** 2
    return rounded or z * z <= x < (z + shown.ulp) ** 2
