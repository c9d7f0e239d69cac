"""The compiled step checker (curation/_stepscan.c) gives the Python path's answers, only faster.

`steps.check` runs the C port and falls back to `steps._check_python` wherever the port returns
None; these tests hold the two to the same (checked, skipped, false claims) on real solutions,
on the hand-written cases of test_steps.py, and on random and mutated text.
"""

from __future__ import annotations

import ast
import json
import random
import shlex
import shutil
import sysconfig
from pathlib import Path

import pytest

from curation import steps
from curation.steps import StepReport

TEST_STEPS = Path(__file__).with_name("test_steps.py")
# Pieces of claims and of what surrounds them, each a feature the tokenizer or parser treats apart.
PIECES = [
    "1", "23", "4.5", "1,000", "1{,}000", "80 000", "0.5", ".5", "12%", "$", "$5", "\\$3", "€", "%", "\\%", "percent",
    "=", "==", "~=", "=~", "≈", "≃", "~", "approx", "approximately", "\\approx", "&", "&=", "+", "-", "−", "–", " – ",
    "*", "**", "/", "÷", "×", "·", "⋅", "^", "²", "³", "⁻³", "⁻", "(", ")", "{", "}", "[", "]", "\\left(", "\\right)",
    "\\[", "\\]", "!", "`", "\\frac", "\\dfrac", "\\tfrac", "\\cdot", "\\times", "\\div", "\\sqrt", "\\begin{aligned}",
    "\\end{aligned}", "\\\\", "kg", "apples", "cars/row", "hours", "cents", "dollars", "of", "x", "X", "per", "means",
    "Case", "Week", "day", "times", "half", "at", "a", "b", "_", ":", ".", ",", ";", "?", " ", " ", " ", "  ", "\n",
    "<<", ">>", "<", ">", "remain", "remainder", "1 1/2", "3 and 1/4", "2 (1/3)", "2020-01-02", "1/2/2020", "3:45",
    "2nd", "07", "...", "…", "'", '"', "“", "‘", "0", "1000", "2", "7", "3", "and", "is", "so", "\u00a0",
]

# Claims on the edge of a rule: exactly half a written place, exactly 1%, a factorial of a percent.
EDGES = [
    "3/4 = 0.8", "3/4 = 0.7", "-3/4 = -0.8", "-3/4 = -0.7", "1/8 ≈ 0.13", "1/8 ≈ 0.12", "200/3 ≈ 66", "1000/3 ≈ 330",
    "101 ≈ 100", "102 ≈ 100", "24 = 400%!", "24 = 4!", "6 = 3!", "0.5 = 50%", "50 = 50%", "2 + 2 = 5!", "34! = 1",
    "13 / 6 = 2, remainder 1", "13 / 6 = 3, remainder 1", "-13 / 6 = -3, remainder 5", "-13 / 6 = -2, remainder 1",
    "7/100 = 0.0", "-7/100 = -0.0", "2^20000 = 5", "3^12000 = 1", "5 kg + 3 lb = 8", "$2 + 3% = 5",
    "-2^2 = 4", "(-2)^2 = 4", "2^-2 = 0.25", "0^-1 = 0", "1^30000 = 1", "$3/2 = $1.50 + $3.00 = $4.50",
]

pytestmark = pytest.mark.skipif(steps._stepscan is None, reason="curation._stepscan is not built (no C compiler)")


def _differences(texts: list[str]) -> tuple[list[str], int]:
    """Texts where the compiled and the Python path disagree, and how many the compiled path left to Python."""
    differ, handed_back = [], 0
    for text in texts:
        found = steps._stepscan.check(text)
        if found is None:
            handed_back += 1
            continue
        want = steps._check_python(text)
        if found != (want.checked, want.skipped, want.false):
            differ.append(f"{text!r:.200}: C {found}, Python {want}")
    return differ, handed_back


def _real_texts(shared_data: Path) -> list[str]:
    texts = []
    for name, fields in (("gsm8k/train.jsonl", ("answer", "question")), ("gsm8k/test.jsonl", ("answer", "question")),
                         ("math500/test.jsonl", ("solution", "problem"))):
        for line in (shared_data / name).read_text().splitlines():
            row = json.loads(line)
            texts += [row[field] for field in fields]
    return texts


def test_the_compiled_checker_is_built_where_a_compiler_exists():
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: the Python path is the checker")
    assert steps._stepscan is not None, f"{compiler} exists but curation._stepscan was not built: reinstall (make install)"


def test_same_answers_on_every_real_gsm8k_and_math500_solution(shared_data):
    texts = _real_texts(shared_data)
    differ, handed_back = _differences(texts)
    assert differ == []
    assert handed_back <= len(texts) // 1000, f"{handed_back} of {len(texts)} texts left to the Python path"


def test_same_answers_on_the_hand_written_cases_of_test_steps():
    tree = ast.parse(TEST_STEPS.read_text())
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    texts += [f"So {t} in all." for t in texts]  # the parametrized claims as test_steps embeds them
    assert len(texts) > 300
    assert _differences(texts)[0] == []


def test_same_answers_on_claims_at_the_edge_of_a_rule():
    texts = EDGES + [f"So {t} in all." for t in EDGES] + [f"<<{t}>>" for t in EDGES]
    assert _differences(texts) == ([], 0)


def test_same_answers_on_random_text_built_from_claim_pieces():
    rng = random.Random(20261130)
    texts = ["".join(rng.choice(PIECES) + rng.choice(["", "", " "]) for _ in range(rng.randint(1, 18)))
             for _ in range(20_000)]
    differ, handed_back = _differences(texts)
    assert differ == []
    assert handed_back < 20


def test_same_answers_on_real_solutions_with_random_edits(shared_data):
    rng, base = random.Random(7), _real_texts(shared_data)
    texts = []
    for _ in range(4_000):
        text = rng.choice(base)
        for _ in range(rng.randint(1, 6)):
            at, roll = rng.randint(0, len(text)), rng.random()
            if roll < 0.5:  # insert a piece
                text = text[:at] + rng.choice(PIECES) + text[at:]
            elif roll < 0.8:  # cut a few characters
                text = text[:at] + text[at + rng.randint(1, 4):]
            else:  # repeat a stretch of the text elsewhere
                src = rng.randint(0, len(text))
                text = text[:at] + text[src : src + rng.randint(1, 30)] + text[at:]
        texts.append(text)
    assert _differences(texts)[0] == []


@pytest.mark.parametrize(
    "text",
    [
        "2^(1/2) = 1.41",  # a fractional power
        "10^100000^1000 = 1",
        "1234567890123456789012345678901234567890 + 1 = 2",  # past 128 bits
        "٣ + ٤ = 8 and 3 + 4 = 8",  # Arabic-Indic digits: Python's \d reads them
        "(" * 300 + "1" + ")" * 300 + " = 2 and 2 + 2 = 5",  # deeper than the port's 100 levels
    ],
)
def test_where_the_port_cannot_promise_an_answer_the_python_path_gives_it(text):
    assert steps._stepscan.check(text) is None
    assert steps.check(text) == steps._check_python(text)


def test_the_python_path_runs_where_the_extension_is_missing(monkeypatch):
    text = "So 3 + 4 = 8 and 2 * 5 = 10 and y = 4"
    compiled = steps.check(text)
    monkeypatch.setattr(steps, "_stepscan", None)
    assert steps.check(text) == compiled == StepReport(checked=2, skipped=1, false=["3 + 4 = 8"])


def test_the_port_reads_only_str():
    with pytest.raises(TypeError, match="got bytes"):
        steps._stepscan.check(b"3 + 4 = 8")
