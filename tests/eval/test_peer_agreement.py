"""sq-jax's verdicts against the expected verdicts of the equivalence tests other math graders ship.

Math-Verify's `tests/`, hendrycks MATH's `math_equivalence_test.py` and Qwen2.5-Math's grader pairs
(`fixtures/peer_cases.jsonl`, see `grader_cases.py`): at least 97% agreement on each source and no false positive
on any of their negative cases, leaving out only the cases `PEER_WRONG` gives a reason for. Every disagreement
is printed (``pytest -rP``) with the source line, the extracted answer and the gold.
"""

from __future__ import annotations

import pytest
from grader_cases import PEER_WRONG, PeerCase, load_cases

from sq_jax.eval.grading import GradeResult, grade_many

SOURCES = ("math-verify", "hendrycks-math", "qwen2.5-math")


@pytest.fixture(scope="module")
def graded() -> list[tuple[PeerCase, GradeResult]]:
    cases = load_cases()
    return list(zip(cases, grade_many([c.request() for c in cases], workers=2, timeout_s=20.0)))


def test_fixture_names_its_sources_and_every_exclusion_is_a_case() -> None:
    cases = load_cases()
    keys = [c.key for c in cases]
    assert len(set(keys)) == len(keys)
    assert set(PEER_WRONG) <= set(keys)
    assert {c.source for c in cases} == set(SOURCES)
    assert all("@" in c.file and ":" in c.file for c in cases)  # repository@commit:path
    assert len([c for c in cases if c.source == "math-verify"]) >= 250


@pytest.mark.parametrize("source", SOURCES)
def test_agreement_with_the_peers_expected_verdicts(graded, source: str) -> None:
    counted = [(c, r) for c, r in graded if c.source == source and c.excluded_because is None]
    wrong = [(c, r) for c, r in counted if r.correct != c.expected]
    for c, r in wrong:
        print(f"{c.key}: expected {c.expected}, graded {r.correct}; extracted={r.extracted!r} "
              f"gold={c.request().gold!r}")
    rate = 100.0 * (len(counted) - len(wrong)) / len(counted)
    print(f"{source}: {len(counted) - len(wrong)}/{len(counted)} = {rate:.1f}%")
    assert rate >= 97.0, [c.key for c, _ in wrong]


def test_no_false_positive_on_a_peer_negative(graded) -> None:
    false_positives = [c.key for c, r in graded if not c.expected and r.correct and c.excluded_because is None]
    assert false_positives == []
