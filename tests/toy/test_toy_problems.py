"""Tests for the procedural toy-problem generator (sq_jax.toy.problems)."""

import dataclasses
import json
import re
from collections import Counter

import pytest

from sq_jax.toy.problems import TEMPLATES, ToyProblem, generate_problems, iter_problems

EQUATION = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)")
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")
NUMBER = re.compile(r"\d+")


@pytest.fixture(scope="module")
def default_run() -> list[ToyProblem]:
    return generate_problems(3000, seed=0)


@pytest.fixture(scope="module")
def long_run() -> list[ToyProblem]:
    return generate_problems(600, seed=11, min_steps=5, max_steps=24)


def check_solution(p: ToyProblem) -> None:
    """Independent re-check of a solvable problem's worked solution."""
    eqs = [tuple(int(x) if x.isdigit() else x for x in m) for m in EQUATION.findall(p.solution)]
    assert len(eqs) == p.steps, p
    for a, op, b, c in eqs:
        if op == "+":
            assert a + b == c, p
        elif op == "-":
            assert a - b == c, p
        elif op == "*":
            assert a * b == c, p
        else:
            assert b != 0 and b * c == a, p  # exact integer division
    assert eqs[-1][3] == p.answer, p
    assert [int(x) for x in BOXED.findall(p.solution)] == [p.answer], p
    assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}."), p


def test_same_seed_gives_identical_output():
    assert generate_problems(300, seed=7) == generate_problems(300, seed=7)
    kw = dict(min_steps=2, max_steps=6, unsolvable_fraction=0.4)
    assert generate_problems(300, 7, **kw) == generate_problems(300, 7, **kw)


def test_different_seeds_give_different_output():
    a, b = generate_problems(200, seed=0), generate_problems(200, seed=1)
    assert sum(x.question == y.question for x, y in zip(a, b)) < 10


def test_prefix_is_independent_of_n():
    assert generate_problems(10)[:5] == generate_problems(5)
    kw = dict(min_steps=1, max_steps=8, unsolvable_fraction=0.3)
    assert generate_problems(400, 3, **kw)[:123] == generate_problems(123, 3, **kw)
    stream = iter_problems(3, **kw)
    assert [next(stream) for _ in range(50)] == generate_problems(50, 3, **kw)


def test_zero_problems():
    assert generate_problems(0) == []


def test_ids_are_unique_and_stable(default_run):
    assert len({p.id for p in default_run}) == len(default_run)
    assert default_run[0].id == "toy-s0-000000"
    assert default_run[1234].id == "toy-s0-001234"
    assert generate_problems(1, seed=5)[0].id == "toy-s5-000000"


def test_questions_are_mostly_distinct(default_run):
    first = default_run[:2000]
    assert len({p.question for p in first}) >= 0.95 * len(first)


def test_solutions_check_out(default_run, long_run):
    for p in default_run + long_run:
        assert p.solvable
        check_solution(p)


def test_answers_are_non_negative_ints(default_run, long_run):
    for p in default_run + long_run:
        assert isinstance(p.answer, int) and p.answer >= 0


@pytest.mark.parametrize("lo,hi", [(1, 1), (1, 4), (3, 3), (2, 7), (5, 24)])
def test_steps_respect_bounds(lo, hi):
    problems = generate_problems(500, seed=2, min_steps=lo, max_steps=hi)
    steps = Counter(p.steps for p in problems)
    assert min(steps) >= lo and max(steps) <= hi
    if hi - lo <= 5:  # every difficulty in a small range shows up
        assert set(steps) == set(range(lo, hi + 1))
    for p in problems:
        check_solution(p)


def test_all_templates_are_used(default_run):
    assert len(TEMPLATES) >= 12
    assert len(set(TEMPLATES)) == len(TEMPLATES)
    used = Counter(p.template for p in default_run)
    assert set(used) == set(TEMPLATES)
    assert min(used.values()) >= 0.3 * len(default_run) / len(TEMPLATES)  # roughly balanced


def test_text_is_ascii_single_question(default_run, long_run):
    unsolvable = generate_problems(500, seed=4, unsolvable_fraction=1.0)
    for p in default_run + long_run + unsolvable:
        assert p.question.isascii() and p.solution.isascii(), p
        assert p.question.endswith("?") and p.question.count("?") == 1, p
        assert "  " not in p.question and p.question == p.question.strip(), p


def test_unsolvable_fraction_is_roughly_respected():
    problems = generate_problems(2000, seed=9, unsolvable_fraction=0.3)
    share = sum(not p.solvable for p in problems) / len(problems)
    assert 0.25 <= share <= 0.35
    assert all(p.solvable for p in generate_problems(300, unsolvable_fraction=0.0))
    assert not any(p.solvable for p in generate_problems(300, unsolvable_fraction=1.0))


def test_unsolvable_problems_have_no_answer():
    problems = generate_problems(1000, seed=9, min_steps=1, max_steps=6, unsolvable_fraction=0.5)
    for p in problems:
        if p.solvable:
            check_solution(p)
        else:
            assert p.answer == -1
            assert "\\boxed" not in p.solution and "boxed" not in p.solution
            assert "missing" in p.solution.lower()
            assert not EQUATION.search(p.solution)
    assert {p.template for p in problems if not p.solvable} == set(TEMPLATES)


def test_unsolvable_variant_removes_a_quantity():
    kw = dict(min_steps=1, max_steps=5)
    full = generate_problems(600, seed=21, unsolvable_fraction=0.0, **kw)
    cut = generate_problems(600, seed=21, unsolvable_fraction=1.0, **kw)
    for f, c in zip(full, cut):
        # Same scenario and difficulty; only the hidden quantity's wording changes.
        assert (f.id, f.template, f.steps) == (c.id, c.template, c.steps)
        assert f.question != c.question
        assert not Counter(NUMBER.findall(c.question)) - Counter(NUMBER.findall(f.question))
        assert len(c.question) < len(f.question) + 40


def test_records_are_json_serialisable(default_run):
    fields = {f.name for f in dataclasses.fields(ToyProblem)}
    for p in default_run[:200]:
        rec = p.to_record()
        assert set(rec) == fields == {"id", "question", "answer", "solution", "steps",
                                      "template", "solvable"}
        assert ToyProblem(**json.loads(json.dumps(rec))) == p


def test_problem_is_frozen(default_run):
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_run[0].answer = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n=-1), "n must be"),
        (dict(n=3, min_steps=0), "min_steps"),
        (dict(n=3, min_steps=5, max_steps=4), "max_steps"),
        (dict(n=3, unsolvable_fraction=-0.1), "unsolvable_fraction"),
        (dict(n=3, unsolvable_fraction=1.5), "unsolvable_fraction"),
        (dict(n=3, unsolvable_fraction=float("nan")), "unsolvable_fraction"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_problems(**kwargs)


def test_iter_problems_fails_before_first_item():
    with pytest.raises(ValueError):
        iter_problems(0, min_steps=3, max_steps=2)  # no next(): the check must be eager
