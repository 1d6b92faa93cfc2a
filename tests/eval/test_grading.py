"""Parallel grading: order, parallel == serial, per-sample timeouts that kill and replace a worker."""

import time

import pytest

from sq_jax.eval.equivalence import answers_match
from sq_jax.eval.extract import extract_answer
from sq_jax.eval.grading import GradeRequest, GradeResult, GradingPool, grade, grade_many

# Whole solutions and bare answers, easy (fast path) and symbolic, right and wrong.
REQUESTS = [
    GradeRequest("So we get \\boxed{\\frac{1}{2}}.", "0.5"),
    GradeRequest("The answer is 18.", "18"),
    GradeRequest("The answer is 19.", "18"),
    GradeRequest("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    GradeRequest("\\boxed{2\\sqrt{3}}", "\\sqrt{8}"),
    GradeRequest("(x+1)^2", "x^2+2x+1", extracted=True),
    GradeRequest("(x+1)^2", "x^2+2x+2", extracted=True),
    GradeRequest("no number at all", "3"),
    GradeRequest("\\boxed{(2,1)}", "(1,2)"),
    GradeRequest("\\boxed{3, 2}", ["2", "3"], multiple=True),
    GradeRequest("\\boxed{[0,1)}", "[0,1]"),
    GradeRequest("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
    GradeRequest("\\boxed{12 \\text{ km}}", ["12"], unit="km"),
    GradeRequest("\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
]
EXPECTED = [True, True, False, True, False, True, False, False, False, True, False, True, True, True]


@pytest.fixture(scope="module")
def pool():
    with GradingPool(2) as p:
        yield p


def test_grade_many_keeps_order_and_is_right(pool: GradingPool) -> None:
    results = pool.grade_many(REQUESTS * 3)
    assert [r.correct for r in results] == EXPECTED * 3
    assert all(not r.timed_out and r.error is None for r in results)
    assert results[0].extracted == "\\frac{1}{2}"
    assert results[7].extracted is None


def test_parallel_equals_serial(pool: GradingPool) -> None:
    parallel = [r.correct for r in pool.grade_many(REQUESTS)]
    serial = []
    for req in REQUESTS:
        answer = req.prediction if req.extracted else extract_answer(req.prediction)
        serial.append(answer is not None and answers_match(answer, req.gold, multiple=req.multiple, unit=req.unit))
    with GradingPool(1) as one:
        single = [r.correct for r in one.grade_many(REQUESTS)]
    assert parallel == serial == single == EXPECTED


def test_shared_pool_and_grade() -> None:
    results = grade_many(REQUESTS[:4], workers=2)
    assert [r.correct for r in results] == EXPECTED[:4]
    assert grade("we find \\boxed{2\\sqrt{2}}", "\\sqrt{8}") == GradeResult(True, extracted="2\\sqrt{2}")
    assert not grade("5", "6", extracted=True).correct


def test_bad_gold_is_a_per_sample_error(pool: GradingPool) -> None:
    results = pool.grade_many([GradeRequest("1", [], extracted=True), GradeRequest("1", "1", extracted=True)])
    assert not results[0].correct and "gold" in (results[0].error or "")
    assert results[1].correct


def test_pathological_inputs_time_out_and_the_pool_keeps_working(pool: GradingPool) -> None:
    deep = "\\frac{1}{" * 2000 + "2" + "}" * 2000
    bad = [
        GradeRequest("10^{10^{10^{10}}}", "5", extracted=True),
        GradeRequest("9^{9^{9^{9}}}", "3", extracted=True),
        GradeRequest(deep, "2", extracted=True),
        GradeRequest("\\boxed{" + deep + "}", "\\frac{1}{2}"),
    ]
    restarts = pool.restarts
    start = time.monotonic()
    # 0.5 s is below math-verify's own one-second signal timeout, so only killing the worker can stop these.
    results = pool.grade_many(bad, timeout_s=0.5)
    assert time.monotonic() - start < 15
    assert [r.correct for r in results] == [False] * len(bad)
    assert results[0].timed_out and results[1].timed_out
    assert "timed out" in (results[0].error or "")
    assert pool.restarts >= restarts + 2
    # The replacement workers grade normal requests (symbolic ones included) as before.
    assert [r.correct for r in pool.grade_many(REQUESTS)] == EXPECTED


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="workers"):
        GradingPool(0)
    with pytest.raises(ValueError, match="timeout_s"):
        GradingPool(1).grade_many(REQUESTS[:1], timeout_s=0)
