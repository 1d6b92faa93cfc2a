"""A gold answer with one digit changed must never grade equal to the gold (`grader_cases.perturbed_requests`).

A deterministic sample of each benchmark's golds, each with one random digit of its value changed, and every
plain-number gold among them moved below 1e-6 (``x \\times 10^{-12}``) and changed the same way; then every worked,
prose College Math gold (a solution with sentences, not a bare answer) with one random digit of its answer changed.
The benchmark `benchmarks/grader_agreement.py --perturb-all` runs every digit of every gold.

Which digits are the answer's is `grader_cases.value_digits`: in a worked gold, the sentences that state
something ("... is $X$", "subset: $X$"), not those that only work ("$A \\times B = C$."); of the 27 College Math
golds the grader once called equal after a change, 16 had the digit in such working, 3 in the left side of an
evaluated limit / function value, where a change keeps the value (``\\sin(11\\pi/3) = \\sin(10\\pi/3)``), and 8 in
the answer. Those 8 stay here as fixed cases (`ANSWER_DIGIT`): a grader that reads past part of a long answer
fails them whatever `value_digits` says.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from grader_cases import change_digit, perturbed_requests, worked

from sq_jax.eval.benchmarks import BenchmarkItem, load_benchmark
from sq_jax.eval.grading import GradeRequest, grade_many

SAMPLE = {"gsm8k": 150, "math500": 150, "college_math": 80, "olympiadbench": 80}

# Long worked College Math golds and the text ending in a digit of their answer that is changed (+1): the grader
# read only the value after the last "is" and passed these. Each names the part of the answer that changes.
ANSWER_DIGIT = {
    "college_math-1744": "If $k \\leq 2",  # the condition of a piecewise answer
    "college_math-1933": "v(t)=-\\cos (\\pi t) / \\pi+1",  # v(t), of "s(t), v(t) and the maximum speed"
    "college_math-2165": "\\sqrt{n} \\theta^{-1 / 2}(1",  # the prior, of "the prior ... the posterior"
    "college_math-2211": "\\mu}_{3}=3\\left(m_{2}-m_{1",  # the plug-in estimator, of two estimators
    "college_math-2256": "gin{array}{rrr}\n2 & -2 & 7",  # the matrix P, of "P ... and D"
    "college_math-2346": "first system is $(x, y, z)=(1",  # the first of two systems' solutions
    "college_math-2387": "{array}{r}-4 \\hat{t} \\\\ -2",  # the solution set, of "solution ... basis"
    "college_math-2472": "\\right\\} \\leftrightarrow 1",  # an eigenvalue, of "eigenvectors ... P ... D"
}


def _boxed(answer: str) -> str:
    return f"So the final answer is $\\boxed{{{answer}}}$."


@pytest.fixture(scope="module")
def college_math(shared_data: Path) -> list[BenchmarkItem]:
    return load_benchmark("college_math", path=str(shared_data / "college_math" / "test.jsonl"))


def _equal(rows: list[tuple[BenchmarkItem, str, GradeRequest]]) -> list[tuple[str, object, str]]:
    results = grade_many([req for _, _, req in rows], workers=2, timeout_s=10.0)
    return [(it.id, it.gold, wrong) for (it, wrong, _), r in zip(rows, results) if r.correct]


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_a_changed_digit_never_grades_equal(shared_data: Path, name: str) -> None:
    rng = random.Random(16)
    items = load_benchmark(name, path=str(shared_data / name / "test.jsonl"))
    rows = list(perturbed_requests(rng.sample(items, SAMPLE[name]), rng))
    assert any("10^{-12}" in wrong for _, wrong, _ in rows)  # numbers below 1e-6 are in the sample
    equal = _equal(rows)
    print(f"{name}: {len(rows)} perturbed answers, {len(equal)} graded equal")
    assert equal == []


def test_a_changed_answer_digit_of_a_worked_gold_never_grades_equal(college_math: list[BenchmarkItem]) -> None:
    prose = [it for it in college_math if worked(str(it.gold))]
    assert len(prose) > 150 and {it.id for it in prose} >= set(ANSWER_DIGIT)
    rows = list(perturbed_requests(prose, random.Random(16)))
    equal = _equal(rows)
    print(f"worked College Math golds: {len(rows)} perturbed answers, {len(equal)} graded equal")
    assert equal == []


def test_a_changed_digit_inside_a_long_answer_is_caught(college_math: list[BenchmarkItem]) -> None:
    items = {it.id: it for it in college_math if it.id in ANSWER_DIGIT}
    requests = []
    for item_id, before in ANSWER_DIGIT.items():
        gold = str(items[item_id].gold)
        pos = gold.index(before) + len(before) - 1
        assert len(gold) > 60 and gold[pos].isdigit(), item_id
        requests += [GradeRequest(_boxed(gold), gold), GradeRequest(_boxed(change_digit(gold, pos)), gold)]
    results = grade_many(requests, workers=2, timeout_s=10.0)
    as_given = {i: r.correct for i, r in zip(ANSWER_DIGIT, results[0::2])}
    changed = {i: r.correct for i, r in zip(ANSWER_DIGIT, results[1::2])}
    assert as_given == dict.fromkeys(ANSWER_DIGIT, True)  # the gold itself, boxed, is read and passes
    assert changed == dict.fromkeys(ANSWER_DIGIT, False)
