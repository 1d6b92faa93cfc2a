"""A gold answer with one digit changed must never grade equal to the gold (`grader_cases.perturbed_requests`).

A deterministic sample of each benchmark's golds, each with one random digit of its value changed, and every
plain-number gold among them moved below 1e-6 (``x \\times 10^{-12}``) and changed the same way. The benchmark
`benchmarks/grader_agreement.py --perturb-all` runs every digit of every gold.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from grader_cases import perturbed_requests

from sq_jax.eval.benchmarks import load_benchmark
from sq_jax.eval.grading import grade_many

SAMPLE = {"gsm8k": 150, "math500": 150, "college_math": 80, "olympiadbench": 80}


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_a_changed_digit_never_grades_equal(shared_data: Path, name: str) -> None:
    rng = random.Random(16)
    items = load_benchmark(name, path=str(shared_data / name / "test.jsonl"))
    rows = list(perturbed_requests(rng.sample(items, SAMPLE[name]), rng))
    assert any("10^{-12}" in wrong for _, wrong, _ in rows)  # numbers below 1e-6 are in the sample
    results = grade_many([req for _, _, req in rows], workers=2, timeout_s=10.0)
    equal = [(it.id, it.gold, wrong) for (it, wrong, _), r in zip(rows, results) if r.correct]
    print(f"{name}: {len(rows)} perturbed answers, {len(equal)} graded equal")
    assert equal == []
