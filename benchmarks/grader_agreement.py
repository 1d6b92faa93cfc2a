"""sq-jax's grader and math-verify side by side: agreement with the peers' own test verdicts, throughput, and the
perturbed-gold check.

    python benchmarks/grader_agreement.py                      # ../shared/data, 2 workers
    python benchmarks/grader_agreement.py --perturb-all        # every value digit of every gold (slow)

1. The equivalence cases of Math-Verify's `tests/`, hendrycks MATH and Qwen2.5-Math (`tests/eval/fixtures/
   peer_cases.jsonl`): agreement per source with the peer's expected verdict, with and without the cases we judge
   the peer wrong on (`PEER_WRONG`), and false positives on the peers' negative cases.
2. Throughput (pairs/s, 2 workers, worker start-up excluded) on the same peer pairs and on realistic perturbed-gold
   replies. math-verify runs `verify(parse(gold), parse(reply))` (its default config) in a 2-process pool.
3. Every gold of GSM8K, MATH-500, College Math and OlympiadBench with one digit of its answer changed (and
   plain-number golds moved below 1e-6): how many each grader calls equal. The answer's digits are
   `grader_cases.value_digits`: in a worked College Math gold (a solution in sentences) those of the sentences that
   state something ("... is $X$", "subset: $X$"), not of those that only work ("$A \\times B = C$.", a row
   reduction), and not the left side of an evaluated limit or function value. Before that rule, 19 of the 27
   College Math golds graded equal had their changed digit in such working (16) or such a left side, where the
   change keeps the value (3: \\sin(11\\pi/3) = \\sin(10\\pi/3)); the other 8 had it in the answer, and those are
   fixed cases of `tests/eval/test_perturbed_golds.py`.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "eval"))

from grader_cases import PeerCase, load_cases, perturbed_requests  # noqa: E402

from sq_jax.eval.benchmarks import load_benchmark  # noqa: E402
from sq_jax.eval.grading import GradeRequest, GradingPool  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "data"
BENCHMARKS = ("gsm8k", "math500", "college_math", "olympiadbench")


def _mv_verdict(pair: tuple[str, str]) -> bool:
    """math-verify's verdict on (gold, reply), both as text (its tests' own usage)."""
    from math_verify import parse, verify

    gold, reply = pair
    try:
        return bool(verify(parse(gold), parse(reply)))
    except Exception:  # a parse or verify failure is a "not equal"
        return False


def _mv_text(c: PeerCase) -> tuple[str, str]:
    # Answer-only pairs (hendrycks, Qwen) are math, not prose: give math-verify its delimiters.
    return (f"${c.gold}$", f"${c.prediction}$") if c.extracted else (c.gold, c.prediction)


def _request_text(req: GradeRequest) -> tuple[str, str]:
    golds = [req.gold] if isinstance(req.gold, str) else list(req.gold)
    return "$" + ", ".join(golds) + "$", req.prediction


def _timed_sq(pool: GradingPool, requests: list[GradeRequest]) -> tuple[list[bool], float]:
    t = time.perf_counter()
    results = pool.grade_many(requests, timeout_s=10.0)
    return [r.correct for r in results], time.perf_counter() - t


def _timed_mv(ex: ProcessPoolExecutor, pairs: list[tuple[str, str]]) -> tuple[list[bool], float]:
    t = time.perf_counter()
    verdicts = list(ex.map(_mv_verdict, pairs, chunksize=16))
    return verdicts, time.perf_counter() - t


def agreement(cases: list[PeerCase], sq: list[bool], mv: list[bool]) -> None:
    print("\n## Agreement with the peers' expected verdicts\n")
    print("| source | cases | sq-jax | math-verify | excluded (peer judged wrong) | sq-jax, excl. | "
          "math-verify, excl. | sq-jax false positives | math-verify false positives |")
    print("|---|---|---|---|---|---|---|---|---|")
    by_source = collections.defaultdict(list)
    for c, s, m in zip(cases, sq, mv):
        by_source[c.source].append((c, s, m))
    for source, rows in [*by_source.items(), ("all", [r for rs in by_source.values() for r in rs])]:
        kept = [r for r in rows if r[0].excluded_because is None]

        def pct(rs: list, i: int) -> str:
            agree = sum(r[i] == r[0].expected for r in rs)
            return f"{agree}/{len(rs)} = {100 * agree / len(rs):.1f}%"

        fp = [sum(r[i] and not r[0].expected for r in kept) for i in (1, 2)]
        print(f"| {source} | {len(rows)} | {pct(rows, 1)} | {pct(rows, 2)} | {len(rows) - len(kept)} | "
              f"{pct(kept, 1)} | {pct(kept, 2)} | {fp[0]} | {fp[1]} |")
    wrong = [c for c, s, _ in zip(cases, sq, mv) if s != c.expected and c.excluded_because is None]
    for c in wrong:
        print(f"  sq-jax disagrees: {c.key} expected {c.expected}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--perturb-all", action="store_true", help="every value digit of every gold, not one per gold")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cases = load_cases()
    rng = random.Random(args.seed)
    per_gold = None if args.perturb_all else 1
    perturbed = {name: list(perturbed_requests(load_benchmark(name, path=str(args.data / name / "test.jsonl")), rng,
                                               per_gold)) for name in BENCHMARKS}
    with GradingPool(args.workers) as pool, ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        pool.grade_many([GradeRequest("\\boxed{x^2}", "x^{2}+0")])  # start the workers (sympy import) untimed
        list(ex.map(_mv_verdict, [("$1$", "$1$")] * args.workers))
        sq, sq_s = _timed_sq(pool, [c.request() for c in cases])
        mv, mv_s = _timed_mv(ex, [_mv_text(c) for c in cases])
        agreement(cases, sq, mv)
        print(f"\n## Throughput ({args.workers} workers, start-up excluded)\n")
        print("| pairs | n | sq-jax pairs/s | math-verify pairs/s |\n|---|---|---|---|")
        print(f"| peer cases | {len(cases)} | {len(cases) / sq_s:.0f} | {len(cases) / mv_s:.0f} |")
        print("\n## Perturbed golds (one digit changed; plain numbers also below 1e-6): graded equal\n")
        print("| benchmark | perturbed answers | sq-jax equal | math-verify equal | sq-jax pairs/s | "
              "math-verify pairs/s |\n|---|---|---|---|---|---|")
        for name, rows in perturbed.items():
            requests = [req for _, _, req in rows]
            sq_p, sq_t = _timed_sq(pool, requests)
            mv_p, mv_t = _timed_mv(ex, [_request_text(r) for r in requests])
            print(f"| {name} | {len(rows)} | {sum(sq_p)} | {sum(mv_p)} | {len(rows) / sq_t:.0f} | "
                  f"{len(rows) / mv_t:.0f} |", flush=True)
            for (it, wrong, _), ok in zip(rows, sq_p):
                if ok:
                    print(f"  sq-jax equal: {it.id} gold={it.gold!r} perturbed={wrong!r}")


if __name__ == "__main__":
    main()
