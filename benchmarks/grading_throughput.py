"""Grading throughput: 5,000 realistic (solution, gold) pairs through `grade_many`.

    python benchmarks/grading_throughput.py                    # ../shared/data, all CPUs
    python benchmarks/grading_throughput.py --n 20000 --workers 8 --data /path/to/shared/data

Pairs come from the gold answers of GSM8K, MATH-500, College Math and OlympiadBench: about half are
correct (boxed at the end of a chain of thought, "The answer is ...", or an equivalent rewrite such as
``\\dfrac`` / a decimal / a unit), half are wrong (a perturbed number, sign or digit). Prints pairs/s and
total seconds (worker start-up included), how many pairs needed sympy, timeouts, and how often the
grade agreed with the intended label.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from fractions import Fraction
from pathlib import Path

from sq_jax.eval.benchmarks import BenchmarkItem, load_benchmark
from sq_jax.eval.equivalence import quick_match
from sq_jax.eval.extract import extract_answer, strip_math_delimiters
from sq_jax.eval.grading import GradeRequest, GradingPool

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FILES = {
    "gsm8k": "gsm8k/test.jsonl",
    "math500": "math500/test.jsonl",
    "college_math": "college_math/test.jsonl",
    "olympiadbench": "olympiadbench/test.jsonl",
}


def _plain(gold: str | list[str]) -> str:
    parts = [gold] if isinstance(gold, str) else gold
    # Unescaped `$` only: `\$36` is a dollar amount, not a math delimiter.
    return ", ".join(re.sub(r"(?<!\\)\$", "", strip_math_delimiters(p)) for p in parts)


def _correct_variant(ans: str, rng: random.Random) -> str:
    if re.fullmatch(r"-?\d+", ans):
        return rng.choice([ans, f"{ans}.0", f"\\${ans}", f"{ans} \\text{{ units}}", f"{int(ans):,}"])
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", ans)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        decimal = f"{float(value):.12g}" if value.denominator in (2, 4, 5, 8, 10) else ans
        return rng.choice([ans.replace("\\frac", "\\dfrac"), decimal])
    return rng.choice([ans, f" {ans} ", ans.replace("\\frac", "\\dfrac")])


def _wrong_variant(ans: str, rng: random.Random) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", ans):
        return rng.choice([str(Fraction(ans) + 1), str(-Fraction(ans)) if Fraction(ans) != 0 else "1", f"{ans}1"])
    digits = [m.start() for m in re.finditer(r"\d", ans)]
    if digits:
        i = rng.choice(digits)
        return ans[:i] + str((int(ans[i]) + 1) % 10) + ans[i + 1 :]
    return f"-({ans})"


def _solution_text(item: BenchmarkItem, answer: str, style: int) -> str:
    # A chain of thought with numbers in it, so the extractor has to pick the right one.
    steps = "\n".join(f"Step {k}: from the problem, {item.question[k * 60 : k * 60 + 60]} ..." for k in range(6))
    if style == 0:
        return f"Let's think step by step.\n{steps}\nTherefore, the final answer is $\\boxed{{{answer}}}$."
    if style == 1 and not re.search(r"\s", answer):  # "The answer is" ends at a space / period
        return f"{steps}\nThe answer is {answer}."
    return f"{steps}\nSo we get \\boxed{{{answer}}}. I hope it is correct."


def build_pairs(data: Path, n: int, seed: int = 0) -> tuple[list[GradeRequest], list[bool]]:
    items = [it for name, f in FILES.items() for it in load_benchmark(name, path=str(data / f))]
    rng = random.Random(seed)
    requests, labels = [], []
    for k in range(n):
        item = items[rng.randrange(len(items))]
        gold = _plain(item.gold)
        correct = k % 2 == 0
        answer = _correct_variant(gold, rng) if correct else _wrong_variant(gold, rng)
        requests.append(item.grade_request(_solution_text(item, answer, rng.randrange(3))))
        labels.append(correct)
    return requests, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()

    requests, labels = build_pairs(args.data, args.n)
    symbolic = sum(
        quick_match(a, r.gold, multiple=r.multiple, unit=r.unit) is None
        for r in requests
        if (a := extract_answer(r.prediction)) is not None
    )
    t0 = time.perf_counter()
    with GradingPool(args.workers) as pool:
        results = pool.grade_many(requests, timeout_s=args.timeout)
        restarts = pool.restarts
    total = time.perf_counter() - t0
    agree = sum(r.correct == y for r, y in zip(results, labels))
    report = {
        "pairs": len(requests),
        "total_s": round(total, 2),
        "pairs_per_s": round(len(requests) / total, 1),
        "workers": pool.workers,
        "needed_sympy": symbolic,
        "timed_out": sum(r.timed_out for r in results),
        "worker_restarts": restarts,
        "errors": sum(r.error is not None and not r.timed_out for r in results),
        "agree_with_label": f"{agree}/{len(requests)}",
    }
    print(json.dumps(report))
    print(f"graded {len(requests)} pairs in {total:.1f} s: {len(requests) / total:.0f} pairs/s "
          f"({symbolic} needed sympy, {report['timed_out']} timed out)")
    for r, y, req in zip(results, labels, requests):
        if r.correct != y:
            print(f"  label {y} graded {r.correct}: extracted {r.extracted!r} gold {req.gold!r} {r.error or ''}")


if __name__ == "__main__":
    main()
