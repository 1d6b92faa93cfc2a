"""Grader test material: the cases other math graders test themselves with, and perturbed benchmark golds.

`fixtures/peer_cases.jsonl` holds every pair of Hugging Face Math-Verify's `tests/` (the parametrized cases, with
the config each test calls `verify` under), hendrycks MATH's `math_equivalence_test.py` and the pairs of
Qwen2.5-Math's `evaluation/grader.py` `_test_math_equal`, each naming its repository, commit and file.

Math-Verify's tests parse both sides from free text, so both go through `extract_answer` here; the hendrycks and
Qwen pairs are already answers (`"extracted": true`) and are compared as they are.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sq_jax.eval.benchmarks import BenchmarkItem
from sq_jax.eval.extract import extract_answer
from sq_jax.eval.grading import GradeRequest

FIXTURE = Path(__file__).with_name("fixtures") / "peer_cases.jsonl"

# Cases whose expected verdict we judge wrong, or right only under a non-default setting of the peer's grader, kept
# out of the agreement denominator. Key: "<file in its repository>:<line>".
_COMMA_DECIMAL = ("a decimal comma (French '2,74'); sq-jax reads '1,22' as the two answers 1 and 22, as MATH's "
                  "'separate answers by commas' requires, and the two readings cannot both hold")
PEER_WRONG: dict[str, str] = {
    "tests/test_all.py:70": _COMMA_DECIMAL,
    "tests/test_all.py:71": _COMMA_DECIMAL,
    "tests/test_all.py:72": _COMMA_DECIMAL,
    "tests/test_all.py:87": _COMMA_DECIMAL,
    "tests/test_all.py:132": "expected 0 only with match_types=['latex']: the reply says 9 (inside a math span broken "
                             "over lines) and math-verify's default config grades it 1 too",
    "tests/test_all.py:133": "same as line 132 with \\( \\): the reply's answer is 9",
    "tests/test_all.py:586": "expected 1 only with precision=2: 0.33 is not 1/3; sq-jax accepts a rounding of 4+ "
                             "significant digits, never one of 2 (it would pass 0.34 for 1/3 at 1 digit's distance)",
    "tests/test_all.py:901": "expected 1 only with allow_set_relation_comp=True; the default (line 907: 0) is what "
                             "sq-jax does",
    "tests/test_boxed.py:8": "the 'gold' is two boxes with '++++++' between them, not one answer; sq-jax reads a "
                             "reply's boxes as one answer only when connectives ('and', ',', \\quad) link them",
    "tests/test_yujianll.py:28": "1 + 1/e (1.368) is not 1 - 1/e (0.632); math-verify marks them equal",
    "tests/test_strict.py:8#2": "expected 1 only with strict=False (f(x) equals f(y)); with the strict default (the "
                                "case before it on line 8) it is 0, which is what sq-jax does",
    "modeling/math_equivalence_test.py:12": "'10, 4, -2' vs '4, 10, -2': MATH asks for all answers 'separated by "
                                           "commas' in any order; the hendrycks grader compares strings",
    "modeling/math_equivalence_test.py:47": "'0.1, 4, 2' vs '4, .1, 2': the same answer list in another order (see "
                                           "line 12)",
    "evaluation/grader.py:370": "a gold rounded to 2-3 digits (0.29) against 0.290243...: math_equal rounds matrix "
                                "entries to 3 decimals; sq-jax never accepts a 2-digit rounding (0.29 vs 0.2949)",
}


@dataclass(frozen=True)
class PeerCase:
    source: str
    file: str
    test: str
    line: int
    gold: str
    prediction: str
    expected: bool
    extracted: bool
    config: dict[str, Any]
    case: int | None = None  # the n-th case written on one source line

    @property
    def key(self) -> str:
        return f"{self.file.split(':', 1)[1]}:{self.line}" + (f"#{self.case}" if self.case else "")

    @property
    def excluded_because(self) -> str | None:
        return PEER_WRONG.get(self.key)

    def request(self) -> GradeRequest:
        # A gold is an answer; one written inside math or a box (as Math-Verify's are) is read like a reply.
        in_math = not self.extracted and any(m in self.gold for m in ("$", "\\(", "\\[", "\\boxed"))
        gold = (extract_answer(self.gold) or self.gold) if in_math else self.gold
        return GradeRequest(self.prediction, gold, extracted=self.extracted)


def load_cases(path: Path = FIXTURE) -> list[PeerCase]:
    cases = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                cases.append(PeerCase(r["source"], r["file"], r["test"], int(r["line"]), r["gold"], r["prediction"],
                                      bool(r["expected"]), bool(r.get("extracted", False)), r.get("config", {}),
                                      r.get("case")))
            except (KeyError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{n}: not a peer case record ({type(e).__name__}: {e})") from e
    return cases


# --- Perturbed golds: one digit changed must never grade equal ---------------------------------------------------

# Digits that are not the answer's value: a unit and its exponent (cm^2, \mathrm{~km}^{2}), a base raised to the
# power 0 (10^{0} is 11^{0}), the working between the first and the last side of a chain (i^{5}=i^{4} i=i,
# k = \ln(1/2)/5.27 \approx -0.1315), and the left side of an evaluated limit or function value, whose changed
# digit can keep the value it names (\sin(11\pi/3) = \sin(10\pi/3); \lim n^2/(2n^2+2) = \lim n^2/(2n^2+1) = 1/2).
_NOT_VALUE = re.compile(
    r"\\(?:text|mathrm|mbox)\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?|\d+(?=\s*\^\s*\{?0\}?(?!\d))"
    r"|\\(?:lim|sin|cos|tan|sec|csc|cot|log|ln)(?![a-zA-Z])[^=$,;]*(?==)"
)
# A worked College Math gold ("[A] x [B] = [C]. So the area is 9.") states its answer in sentences with a verb
# ("is", "are", "equals") or a colon; a sentence without one is working (a cross product, a row reduction, a
# restated formula), where a changed digit leaves the stated answer as it was.
_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$", re.DOTALL)
_SENTENCE = re.compile(r"[^.;]+(?:[.;](?=\s|$)|$)")
_STATING = re.compile(r"\b(?:is|are|equals)\b|:")
_TWO_WORDS = re.compile(r"\b[A-Za-z]{2,}\s+[A-Za-z]{3,}\b|\b[A-Za-z]{3,}\s+[A-Za-z]{2,}\b")
_ELEMENT = re.compile(r"[^,;$]+")


def _masked(gold: str) -> str:
    return _MATH.sub(lambda m: "#" * len(m.group(0)), gold)  # periods inside math do not end a sentence


def worked(gold: str) -> bool:
    """A gold written as a solution in sentences ("The area is $8 \\sqrt{3}$."), not a bare answer."""
    return bool(_TWO_WORDS.search(_masked(gold)))


def _unstated(gold: str) -> set[int]:
    """Positions of the sentences of a worked (prose) gold that state nothing."""
    if not worked(gold):
        return set()
    sentences = list(_SENTENCE.finditer(_masked(gold)))
    if not any(_STATING.search(m.group(0)) for m in sentences):
        return set()  # "concave up on $(a, b)$ and $(c, d)$": no statement, so all of it is the answer
    return {i for m in sentences if not _STATING.search(m.group(0)) for i in range(*m.span())}


def _working(gold: str) -> set[int]:
    hidden: set[int] = _unstated(gold)
    for element in _ELEMENT.finditer(gold):
        eqs = [element.start() + m.start() for m in re.finditer(r"(?<![<>!\\])=|\\approx", element.group(0))]
        if len(eqs) >= 2:
            hidden.update(range(eqs[0], eqs[-1]))
    return hidden


# Golds whose text holds working that no rule above can tell apart (item id -> the working, and why).
WORKING: dict[str, tuple[str, str]] = {
    "college_math-1270": ("\\left[\\begin{array}{rr}12 & -7 \\\\ -5 & 3\\end{array}\\right]\\left[\\begin{array}{r}0 \\\\ -1"
                          "\\end{array}\\right]", "the product A v worked out; the answer is 'So x=7 and y=-3' after it"),
    "college_math-1254": ("\\left[\\begin{array}{rr}12 & -7 \\\\ -5 & 3\\end{array}\\right]\\left[\\begin{array}{l}26 \\\\ 39"
                          "\\end{array}\\right]=\\left[\\begin{array}{r}39 \\\\ -13\\end{array}\\right]",
                          "the product A v worked out; the answer is 'So x=39 and y=-13' after it"),
}


def value_digits(gold: str, item_id: str = "") -> list[int]:
    """Positions of the digits of ``gold`` that carry its value."""
    hidden = {i for m in _NOT_VALUE.finditer(gold) for i in range(m.start(), m.end())} | _working(gold)
    if item_id in WORKING and WORKING[item_id][0] in gold:
        start = gold.index(WORKING[item_id][0])
        hidden.update(range(start, start + len(WORKING[item_id][0])))
    return [m.start() for m in re.finditer(r"\d", gold) if m.start() not in hidden]


def change_digit(gold: str, pos: int) -> str:
    return gold[:pos] + str((int(gold[pos]) + 1) % 10) + gold[pos + 1 :]


def tiny(gold: str) -> str | None:
    """A plain-number gold moved below 1e-6 (``12.5`` -> ``12.5\\times 10^{-12}``), or None."""
    plain = re.fullmatch(r"-?\d+(?:\.\d+)?", gold.strip())
    return f"{gold}\\times 10^{{-12}}" if plain and float(gold) != 0 else None


def perturbed_requests(
    items: list[BenchmarkItem], rng: random.Random, per_gold: int | None = 1
) -> Iterator[tuple[BenchmarkItem, str, GradeRequest]]:
    """(item, perturbed gold, request) for ``per_gold`` random value digits of each gold (None: every digit),
    plus the same for the gold moved below 1e-6 when it is a plain number. The perturbed answer is written
    the way a model writes it and graded against the true gold."""
    for it in items:
        parts = [it.gold] if isinstance(it.gold, str) else list(it.gold)
        golds = [(", ".join(parts), it.gold)]
        small = tiny(parts[0]) if len(parts) == 1 else None
        if small:
            golds.append((small, small))
        for text, gold in golds:
            digits = value_digits(text, it.id)
            chosen = digits if per_gold is None else rng.sample(digits, min(per_gold, len(digits)))
            for pos in chosen:
                wrong = change_digit(text, pos)
                reply = f"So the final answer is $\\boxed{{{wrong}}}$."
                yield it, wrong, GradeRequest(reply, gold, it.multiple, it.unit)
