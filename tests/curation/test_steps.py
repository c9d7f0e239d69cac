"""The arithmetic step checker: each claim kind, the guards against false alarms, real GSM8K."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from curation import steps
from curation.steps import StepReport, check, check_many, false_claims

# Measured on GSM8K train (7,473 answers): 27 traces flagged, each read by hand and each a real
# slip in GSM8K's own prose ("14*20=140", "$4200+$3000 = $8600", "8*3 = <<80*3=240>>240").
GSM8K_TRAIN_FLAGGED = 27


@pytest.mark.parametrize(
    ("true", "false", "claim"),
    [
        pytest.param("48 / 2 = 24", "48 / 2 = 25", "48 / 2 = 25", id="plain"),
        pytest.param("3 x 4 = 12", "3 x 4 = 13", "3 x 4 = 13", id="x-as-times"),
        pytest.param("2 + 3 = 5 = 5", "2 + 3 = 5 = 6", "2 + 3 = 5 = 6", id="chain"),
        pytest.param("2 * 3 + 4 = 10", "2 * 3 + 4 = 14", "2 * 3 + 4 = 14", id="two-ops"),
        pytest.param("(2 + 3) * 4 = 20", "(2 + 3) * 4 = 14", "(2 + 3) * 4 = 14", id="brackets"),
        pytest.param("1/2 + 1/3 = 5/6", "1/2 + 1/3 = 2/5", "1/2 + 1/3 = 2/5", id="fraction"),
        pytest.param("2.5 * 1.2 = 3", "2.5 * 1.2 = 3.2", "2.5 * 1.2 = 3.2", id="decimal"),
        pytest.param("-5 + 3 = -2", "-5 + 3 = 2", "-5 + 3 = 2", id="negative"),
        pytest.param("25% of 80 = 20", "25% of 80 = 25", "25% of 80 = 25", id="percent-of"),
        pytest.param("20% = 0.2", "20% = 0.02", "20% = 0.02", id="percent-as-decimal"),
        pytest.param("2^10 = 1024", "2^10 = 1000", "2^10 = 1000", id="caret-power"),
        pytest.param("3**4 = 81", "3**4 = 84", "3**4 = 84", id="star-power"),
        pytest.param("1,080 / 2 = 540", "1,080 / 2 = 530", "1,080 / 2 = 530", id="thousands"),
        pytest.param("$12 * 3 = $36", "$12 * 3 = $38", "$12 * 3 = $38", id="currency"),
        pytest.param("5 apples + 3 apples = 8 apples", "5 apples + 3 apples = 9 apples",
                     "5 apples + 3 apples = 9", id="unit-words"),
        pytest.param("15 rows * 10 cars/row = 150 cars", "15 rows * 10 cars/row = 160 cars",
                     "15 rows * 10 cars/row = 160", id="rate-unit"),
        pytest.param("12 cm * 3 = 36 cm", "12 cm * 3 = 38 cm", "12 cm * 3 = 38", id="unit-cm"),
        pytest.param("22/7 ≈ 3.14", "22/7 ≈ 3.5", "22/7 ≈ 3.5", id="approx"),
        pytest.param("100/3 ~= 33.3", "100/3 ~= 30.3", "100/3 ~= 30.3", id="approx-ascii"),
        pytest.param("\\frac{3}{4} \\times 8 = 6", "\\frac{3}{4} \\times 8 = 5", "\\frac{3}{4} \\times 8 = 5",
                     id="latex"),
        pytest.param("6 \\div 4 = 1.5", "6 \\cdot 4 = 23", "6 \\cdot 4 = 23", id="latex-div-cdot"),
        pytest.param("<<48/2=24>>", "<<48/2=26>>", "48/2=26", id="annotation"),
        pytest.param("a_5 = 2 + 4 \\cdot 3 = 14", "a_5 = 2 + 4 \\cdot 3 = 16", "2 + 4 \\cdot 3 = 16",
                     id="chain-after-a-subscript"),
        pytest.param("f(2) = 2^2 + 1 = 5", "f(2) = 2^2 + 1 = 6", "2^2 + 1 = 6", id="chain-after-a-function"),
        pytest.param("12 \\times 15 &= 180", "12 \\times 15 &= 190", "12 \\times 15 &= 190", id="latex-aligned"),
        pytest.param("5² = 25", "5² = 24", "5² = 24", id="superscript-power"),
        pytest.param("2 × 10⁻³ = 0.002", "2 × 10⁻³ = 0.02", "2 × 10⁻³ = 0.02", id="superscript-negative-power"),
        pytest.param("3240 / 60 = 54!", "3240 / 60 = 52!", "3240 / 60 = 52", id="exclamation"),
        pytest.param("3 * 2 * 1 = 3!", "3 * 2 * 1 = 4!", "3 * 2 * 1 = 4", id="factorial-result"),
        pytest.param("$ 45 kg + 12 kg = 57 kg $", "$ 45 kg + 12 kg = 54 kg $", "$ 45 kg + 12 kg = 54",
                     id="units-in-latex-math"),
        pytest.param("`22 * 48 = 1056`", "`22 * 48 = 1055`", "22 * 48 = 1055", id="markdown-code"),
        pytest.param("**23 kg + 2 kg = 25 kg**", "**23 kg + 2 kg = 26 kg**", "23 kg + 2 kg = 26",
                     id="markdown-bold"),
        pytest.param("1{,}080 / 2 = 540", "1{,}080 / 2 = 530", "1{,}080 / 2 = 530", id="latex-thousands"),
        pytest.param("20% off $50 means $50 × 0.8 = $40", "20% off $50 means $50 × 0.8 = $45", "$50 × 0.8 = $45",
                     id="a-verb-is-not-a-unit"),
    ],
)
def test_a_true_claim_passes_and_its_false_twin_is_flagged_as_written(true, false, claim):
    assert false_claims(f"So {true} in all.") == []
    assert false_claims(f"So {false} in all.") == [claim]


def test_cpu_smoke_gcd_trace_flags_only_the_false_division():
    text = "The greatest common divisor of 60 and 57 is 6. 60 / 6 = 10 and 57 / 6 = 15."
    report = check(text)
    assert report.false == ["57 / 6 = 15"]  # 60 / 6 = 10 is true and checked too
    assert report.checked == 2


def test_cpu_smoke_verbal_claim_is_not_parsed_and_the_arithmetic_is_true():
    report = check("The product of 1 and 0 is 1. 0 * 1 = 0.")
    assert report.false == []
    assert report.checked == 1  # "0 * 1 = 0"; "product of 1 and 0 is 1" is words, not arithmetic


def test_written_decimals_accept_rounding_and_truncation_but_nothing_wider():
    assert false_claims("<<10/3=3.33>>") == []  # rounded
    assert false_claims("2/3 = 0.66") == []  # truncated
    assert false_claims("12 / 18 * 100% = 66.666...%") == []  # "100%" as a label, truncated
    assert false_claims("10/3 = 3.34") == ["10/3 = 3.34"]  # above the value: neither
    assert false_claims("10/3 = 3") == ["10/3 = 3"]  # integers are exact


def test_approximate_sign_allows_half_a_written_place_or_one_percent():
    assert false_claims("10/3 ≈ 3.3") == []  # within 0.05
    assert false_claims("1000/3 ≈ 330") == []  # "330": last place is the tens, 1% is 3.3
    assert false_claims("1000/3 ≈ 340") == ["1000/3 ≈ 340"]  # 6.7 off: beyond 5 and beyond 1%


def test_mixed_numbers_and_tight_fractions_read_as_people_write_them():
    assert false_claims("8 x 1 1/2 = 12 dinner rolls") == []
    assert false_claims("Marco gets 28 / 1/5 = 28 * 5 = 140 cups") == []
    assert false_claims("8 x 1 1/2 = 13 dinner rolls") == ["8 x 1 1/2 = 13"]


@pytest.mark.parametrize(
    "text",
    [
        "2^(1/2) = 1.41",  # irrational power
        "2^100000 = 5",  # too large to evaluate
        "10^100000^1000 = 1",
        "5 / 0 = 3",  # division by zero
        "x = 5",  # a variable
        "n + 1 = 6",
        "1 hour = 60 minutes",  # a conversion, not arithmetic
    ],
)
def test_a_claim_it_cannot_evaluate_is_counted_as_skipped_not_flagged(text):
    assert check(text) == StepReport(checked=0, skipped=1, false=[])


@pytest.mark.parametrize(
    "text",
    [
        # each would be flagged if read naively; the comment says what the naive reading gets wrong
        "The date 2023-10-05 = 5 Oct.",  # a date, not 2023 - 10 - 5
        "We met at 3:45 = 3.75 hours after noon.",  # a time, not "45 = 3.75"
        "The ratio 3:4 = 0.75 is kept.",  # a ratio, not "4 = 0.75"
        "Tasks take 5-10 = 7.5 minutes on average.",  # a range, not 5 - 10
        "Weeks 1-2 = 96 - 70 = 26 hours",
        "1. 3 + 4 = 7\n2. 7 * 2 = 14",  # list numbering
        "10 pages per day on day 1 * 2 = 20 pages",  # a label, not 1 * 2
        "n + 1.5 = 6 so n = 4.5",  # variables
        "2x + 1 = 7",
        "3 times 4 = 12 and 3 times 3 + 4 = 13",  # verbal operations, not "3 + 4 = 13"
        "Half of 10 + 2 = 7",
        "6 feet 2 inches = 74 inches",  # compound quantities
        "150 / 60 = 2.5 hours = 2 hours 30 minutes",
        "Area of 4 bedrooms = 121 * 4 = 484 square feet",  # a label, not "4 = 484"
        "his 25 classmates + his 1 teacher + 1 himself = 27 people",
        "3 * 4 = 12 cm^2",  # a unit's exponent, not 12^2
        "f(2) = 2 * 2 = 4",  # a function, not "(2) = 4"
        "3! + 2 + 1 = 9",  # a factorial
        "Dawn earned $2.50 - $2.24 = 26 cents more",  # a conversion
        "so $3/2 = $1.50+$3.00=$4.50",  # a running total
        "14, 400 / 80 = 180",  # 14,400 with a stray space
        "13 / 6 = 2 full cycles with a remainder of 1 hour",  # a quotient
        "between 1.5~2.5 kg",  # "~" as a range
        "Arthur is 11am + 3 = 2pm",  # clock time
        "90 crocus bulbs at $.50 = $45.00",  # a price per item, not "$.50 = $45"
        "\\lceil (3.6)^2 \\rceil = \\lceil 12.96 \\rceil = 13",  # a ceiling, not "12.96 = 13"
        "\\log_2 8 = 3 = 1 + 2",  # a logarithm, not "8 = 3"
        "Q&A = 5 + 3",  # an ampersand in prose, not alignment
        "x² = 26 - 1",  # a variable's square
        "4 * 3 * 2 * 1 = (2 + 2)!",  # the factorial of an expression
        "12 cm² = 3 * 4",  # a unit's exponent, as "cm^2"
    ],
)
def test_no_false_alarm_on_things_that_look_like_claims(text):
    assert false_claims(text) == []


def test_a_latex_aligned_environment_is_read_line_by_line():
    text = "$$\\begin{aligned} 12 \\times 15 &= 180 \\\\ 180 + 20 &= 210 \\end{aligned}$$"
    assert check(text) == StepReport(checked=2, skipped=0, false=["180 + 20 &= 210"])


def test_a_list_marker_opening_a_line_is_not_part_of_the_claim():
    text = "1) 3 + 4 = 8\n(b) 2 * 5 = 11\nCase 2) 6 - 1 = 4\n(1/2) 278 + 11 = 150"  # the last: a factor
    assert check(text) == StepReport(checked=3, skipped=1, false=["3 + 4 = 8", "2 * 5 = 11", "6 - 1 = 4"])


def test_check_and_false_claims_agree_and_report_is_frozen():
    text = "So 3 + 4 = 8 and 2 * 5 = 10 and y = 4"
    report = check(text)
    assert report.false == false_claims(text) == ["3 + 4 = 8"]
    assert (report.checked, report.skipped) == (2, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.checked = 0  # type: ignore[misc]


def test_no_digit_means_nothing_to_check():
    assert check("No numbers here = none.") == StepReport(checked=0, skipped=0, false=[])


def test_pathological_lines_are_skipped_not_crashed():
    deep = "(" * 5000 + "1" + ")" * 5000 + " = 2"  # deeper than Python's recursion limit
    assert check(deep).false == [] and check(deep).skipped == 1
    assert check("2^2^2^2^2^2 = 5").false == []  # a power tower too large to evaluate
    assert check(") 3 + 4 = 8") == StepReport(checked=0, skipped=1, false=[])  # a bracket with nothing before it
    with pytest.raises(TypeError, match="got int"):
        check(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_check_many_gives_each_traces_false_claims_and_the_totals(monkeypatch, compiled):
    if not compiled:
        monkeypatch.setattr(steps, "_stepscan", None)
    elif steps._stepscan is None:
        pytest.skip("curation._stepscan is not built (no C compiler)")
    # the fifth is handed back by the compiled checker (a fractional power): the Python path reads it
    texts = ["So 3 + 4 = 8.", None, "", "no digits = none", "2^(1/2) = 1.41 and 2 + 2 = 5", "12 * 3 = 36 and y = 4"]
    tally = check_many(texts)
    reports = [check(text) for text in texts]
    assert tally.false == [r.false for r in reports] == [["3 + 4 = 8"], [], [], [], ["2 + 2 = 5"], []]
    assert (tally.checked, tally.skipped) == (sum(r.checked for r in reports), sum(r.skipped for r in reports)) == (3, 2)
    with pytest.raises(TypeError, match="item 1 is int"):
        check_many(["1 + 1 = 2", 5])  # type: ignore[list-item]


def _gsm8k_train(shared_data: Path) -> list[str]:
    path = shared_data / "gsm8k" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K train not found at {path}")
    return [json.loads(line)["answer"] for line in path.read_text().splitlines()]


def test_gsm8k_train_flags_at_most_one_percent_and_exactly_the_measured_count(shared_data):
    answers = _gsm8k_train(shared_data)
    assert len(answers) == 7473
    flagged = [a for a in answers if false_claims(a)]
    assert len(flagged) <= len(answers) // 100
    assert len(flagged) == GSM8K_TRAIN_FLAGGED


# ---- planted claims: one false claim per trace, every kind; the same trace unchanged as control

_TEMPLATES = ("So {} in all.", "We get {}.", "That makes {}, which we use next.", "Then {} for the week.",
              "**Step 2:** {}", "- {}", "1) {}", "Case 2) {}", "Now {}!", "`{}`", "**{}**", "> {}")
# a prose result written after its note, with only numbers and operators before the "=": "48/2 = <<48/2=24>>24"
_STATED = re.compile(r"(?<![\w.,/])((?:\$?\d+(?:\.\d+)? ?[-+*/x] ?)+\$?\d+(?:\.\d+)?) ?= ?\$?"
                     r"<<[^<>]*=([^<>=]*)>>(\d+(?:\.\d+)?)(?![\d,.]\d)")
_ANNOTATED = re.compile(r"<<[^<>]*=(\d+)>>")


def _wrong(value: Fraction, rng: random.Random) -> Fraction:
    """A nearby wrong value, the kind of slip a model makes."""
    return value + rng.choice([d for d in (-3, -2, -1, 1, 2, 5, 10) if value + d > 0])


def _num(value: Fraction) -> str:
    """A terminating value as a person writes it: "12", "3.5"."""
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.6f}".rstrip("0")


def _claim(kind: str, rng: random.Random) -> tuple[str, str]:
    """A true claim of `kind` and its false twin."""
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 30)
    if kind == "plain":
        op = rng.choice(["+", "-", "*", "x", "×", "/"])
        x, y = (a * b, b) if op == "/" else (a + b, b) if op == "-" else (a, b)
        value = {"+": x + y, "-": x - y, "/": x // y}.get(op, x * y)
        left = f"{x}{rng.choice([' ', ''])}{op}{rng.choice([' ', ''])}{y}"
        return f"{left} = {value}", f"{left} = {_num(_wrong(Fraction(value), rng))}"
    if kind == "chain":
        total, wrong = a + b + c, _wrong(Fraction(a + b), rng)
        if rng.random() < 0.5:
            return f"{a} + {b} + {c} = {a + b} + {c} = {total}", f"{a} + {b} + {c} = {_num(wrong)} + {c} = {total}"
        return f"{a} * {b} = {a * b} = {a * b}", f"{a} * {b} = {a * b} = {_num(_wrong(Fraction(a * b), rng))}"
    if kind == "fraction":
        x, y = Fraction(rng.randint(1, 4), rng.randint(5, 9)), Fraction(rng.randint(1, 3), rng.randint(4, 7))
        if rng.random() < 0.5:
            s = x + y
            return f"{x} + {y} = {s}", f"{x} + {y} = {s.numerator + 1}/{s.denominator}"
        whole = x.denominator * c
        return f"{x} of {whole} = {x * whole}", f"{x} of {whole} = {_num(_wrong(x * whole, rng))}"
    if kind == "decimal":
        x = Fraction(rng.randint(11, 999), 10)
        if rng.random() < 0.5:
            wrong = x * c + Fraction(rng.randint(1, 9), 10)
            return f"{_num(x)} * {c} = {_num(x * c)}", f"{_num(x)} * {c} = {_num(wrong)}"
        q = Fraction(a * 3 + 1, 3)  # a non-terminating quotient written to two places
        shown = round(float(q), 2)
        return f"{a * 3 + 1} / 3 = {shown:.2f}", f"{a * 3 + 1} / 3 = {shown + rng.choice([-0.05, 0.02, 0.1]):.2f}"
    if kind == "percent":
        p, y = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75]), 20 * rng.randint(1, 30)
        if rng.random() < 0.5:
            value = Fraction(p * y, 100)
            return f"{p}% of {y} = {_num(value)}", f"{p}% of {y} = {_num(_wrong(value, rng))}"
        return f"{p}% = {_num(Fraction(p, 100))}", f"{p}% = {_num(Fraction(p, 1000))}"
    if kind == "power":
        base, e, sign = rng.randint(2, 12), rng.randint(2, 5), rng.choice(["^", "**"])
        return f"{base}{sign}{e} = {base**e}", f"{base}{sign}{e} = {_num(_wrong(Fraction(base**e), rng))}"
    if kind == "thousands":
        x, y = rng.randint(1000, 99999), rng.randint(1000, 99999)
        wrong = x + y + rng.choice([-1000, -100, 10, 100, 1000])
        return f"{x:,} + {y:,} = {x + y:,}", f"{x:,} + {y:,} = {wrong:,}"
    if kind == "units":
        unit = rng.choice(["apples", "cm", "hours", "pages"])
        if rng.random() < 0.5:
            return f"${a} * {c} = ${a * c}", f"${a} * {c} = ${_num(_wrong(Fraction(a * c), rng))}"
        wrong = _num(_wrong(Fraction(a + b), rng))
        return f"{a} {unit} + {b} {unit} = {a + b} {unit}", f"{a} {unit} + {b} {unit} = {wrong} {unit}"
    if kind == "approx":
        q, sign = Fraction(a * 7 + 1, 7), rng.choice(["≈", "~=", "approx", "\\approx"])
        off = float(q) * rng.choice([0.9, 0.95, 1.05, 1.1]) + 0.1
        return f"{a * 7 + 1}/7 {sign} {float(q):.2f}", f"{a * 7 + 1}/7 {sign} {off:.2f}"
    if kind == "latex":
        form = rng.choice(["$\\frac{{{a}}}{{{b}}} \\times {c} = {r}$", "\\( {a} \\cdot {c} = {r} \\)"])
        value = Fraction(a, b) * c if "frac" in form else Fraction(a * c)
        if value.denominator != 1:
            value, form = Fraction(a * c), "\\( {a} \\cdot {c} = {r} \\)"
        wrong = _wrong(value, rng)
        return form.format(a=a, b=b, c=c, r=_num(value)), form.format(a=a, b=b, c=c, r=_num(wrong))
    raise ValueError(f"unknown claim kind {kind!r}")


def _corrupt(answer: str, kind: str, rng: random.Random) -> tuple[str, int] | None:
    """The answer with one annotation result ("annotation") or one prose result after an annotation
    ("stated") made wrong, and the offset of the change; None when the answer has no such result."""
    pattern, group = (_ANNOTATED, 1) if kind == "annotation" else (_STATED, 3)
    matches = [m for m in pattern.finditer(answer) if kind == "annotation" or m[2].strip() == m[3]]
    if not matches:
        return None
    m = rng.choice(matches)
    value = Fraction(m[group])
    new = _num(_wrong(value, rng)) if value.denominator == 1 else f"{float(value) + 1:g}"
    return answer[: m.start(group)] + new + answer[m.end(group) :], m.start(group)


SYNTHETIC = ("plain", "chain", "fraction", "decimal", "percent", "power", "thousands", "units", "approx", "latex")
KINDS = (*SYNTHETIC, "annotation", "stated")


def planted(answers: list[str], per_kind: int = 100, seed: int = 0) -> list[tuple[str, str, str, int]]:
    """(kind, unchanged trace, trace with one planted false claim, offset of the planted error).

    Synthetic claims go in as a new sentence after a random line of a GSM8K answer; "annotation"
    corrupts one `<<a*b=c>>` result and "stated" the prose result written after one.
    """
    rng, out = random.Random(seed), []
    for kind in KINDS:
        made = 0
        while made < per_kind:
            answer = rng.choice(answers)
            lines = answer.split("\n")
            if kind in SYNTHETIC:
                true, false = _claim(kind, rng)
                at, sentence = rng.randrange(len(lines) - 1), rng.choice(_TEMPLATES)
                before = "\n".join(lines[: at + 1]) + "\n"
                tail = "\n" + "\n".join(lines[at + 1 :])
                same = next((i for i, (p, q) in enumerate(zip(true, false)) if p != q), len(true))
                offset = len(before) + sentence.index("{}") + same  # where the twins first differ
                unchanged, planted_ = before + sentence.format(true) + tail, before + sentence.format(false) + tail
                out.append((kind, unchanged, planted_, offset))
            else:
                corrupted = _corrupt(answer, kind, rng)
                if corrupted is None:
                    continue
                out.append((kind, answer, *corrupted))
            made += 1
    return out


def flags_planted(text: str, offset: int) -> bool:
    """Whether a flagged claim covers the planted error's offset (not just any claim)."""
    for claim in false_claims(text):
        at = text.find(claim)
        while at >= 0:
            if at <= offset < at + len(claim):
                return True
            at = text.find(claim, at + 1)
    return False


def test_planted_false_claims_are_found_and_their_true_twins_pass(shared_data):
    # controls must be correct traces: leave out the 27 answers with a real slip of GSM8K's own
    answers = [a for a in _gsm8k_train(shared_data) if not false_claims(a)]
    cases = planted(answers)
    assert {kind for kind, *_ in cases} == set(KINDS) and len(cases) == 100 * len(KINDS)
    for kind in KINDS:  # each kind on its own: one weak kind must not hide behind the others
        found = [flags_planted(false, offset) for k, _, false, offset in cases if k == kind]
        assert sum(found) / len(found) >= 0.95, kind
    false_alarms = sum(bool(false_claims(true)) for _, true, _, _ in cases)
    assert false_alarms / len(cases) <= 0.01
