"""The grader must mark each benchmark's gold answer correct when it is written the way a model writes it.

Every disagreement is printed (see it with ``pytest -rP``) with the item id, the extracted answer and
the gold, so a regression shows exactly which answers broke.
"""

import re
from pathlib import Path

import pytest

from sq_jax.eval.benchmarks import BenchmarkItem, load_benchmark
from sq_jax.eval.extract import strip_math_delimiters
from sq_jax.eval.grading import GradeRequest, grade_many


def _plain(answer: str) -> str:
    # Unescaped `$` only: `\$36` is a dollar amount, not a math delimiter.
    return re.sub(r"(?<!\\)\$", "", strip_math_delimiters(answer)).strip()


def _in_a_sentence(answer: str) -> str:
    return f"Putting everything together, the final answer is $\\boxed{{{answer}}}$. I hope it is correct."


def _gsm8k(item: BenchmarkItem) -> GradeRequest:
    # The worked solution with its "#### X" line restated the way chat models end a solution.
    assert item.gold_solution is not None
    text = re.sub(r"####\s*(.+?)\s*$", lambda m: f"The answer is {m.group(1)}.", item.gold_solution)
    return item.grade_request(text)


def _math500(item: BenchmarkItem) -> GradeRequest:
    assert item.gold_solution is not None  # the worked solution ends in \boxed{...}
    return item.grade_request(item.gold_solution)


def _college_math(item: BenchmarkItem) -> GradeRequest:
    assert isinstance(item.gold, str)
    return item.grade_request(_in_a_sentence(_plain(item.gold)))


def _olympiadbench(item: BenchmarkItem) -> GradeRequest:
    parts = [item.gold] if isinstance(item.gold, str) else item.gold
    return item.grade_request(_in_a_sentence(", ".join(_plain(p) for p in parts)))


CASES = {
    "gsm8k": ("gsm8k/test.jsonl", _gsm8k, 99.5),
    "math500": ("math500/test.jsonl", _math500, 99.5),
    "college_math": ("college_math/test.jsonl", _college_math, 99.0),
    "olympiadbench": ("olympiadbench/test.jsonl", _olympiadbench, 99.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gold_is_graded_correct(shared_data: Path, name: str) -> None:
    rel, rewrite, threshold = CASES[name]
    items = load_benchmark(name, path=str(shared_data / rel))
    results = grade_many([rewrite(it) for it in items], timeout_s=10.0)
    wrong = [(it, r) for it, r in zip(items, results) if not r.correct]
    for it, r in wrong:
        print(f"{name} disagreement: id={it.id} extracted={r.extracted!r} gold={it.gold!r} error={r.error}")
    rate = 100.0 * (len(items) - len(wrong)) / len(items)
    print(f"{name}: {len(items) - len(wrong)}/{len(items)} = {rate:.2f}% graded correct")
    first = [(it.id, r.extracted) for it, r in wrong[:5]]
    assert rate >= threshold, f"{name}: {rate:.2f}% < {threshold}%; first disagreements: {first}"


def test_perturbed_gold_is_graded_wrong(shared_data: Path) -> None:
    # The other half of the contract: the same answers with one digit changed must not pass.
    items = load_benchmark("math500", path=str(shared_data / "math500/test.jsonl"))
    requests, kept = [], []
    for it in items:
        assert isinstance(it.gold, str)
        digits = [m.start() for m in re.finditer(r"\d", it.gold)]
        if not digits:
            continue
        i = digits[0]
        # The first digit: a later one may sit in a unit's exponent ("cm}^2"), which grading rightly ignores.
        changed = it.gold[:i] + str((int(it.gold[i]) + 3) % 10) + it.gold[i + 1 :]
        requests.append(it.grade_request(_in_a_sentence(changed)))
        kept.append((it, changed))
    results = grade_many(requests, timeout_s=10.0)
    passed = [(it.id, changed, it.gold) for (it, changed), r in zip(kept, results) if r.correct]
    for row in passed:
        print("perturbed but graded correct:", row)
    assert len(requests) > 400
    assert not passed
