"""Question filters: language reasons, MinHash near-duplicates, 13-gram decontamination on the real test sets."""

import random
import re
import time
from pathlib import Path

import pytest

from sq_jax.eval.benchmarks import load_benchmark
from sq_jax.toy.problems import generate_problems
from sq_jax.pipeline.filters import (
    Decontaminator,
    NearDuplicateFilter,
    decontaminate,
    dedup,
    language_problem,
    normalize,
)

BENCHMARKS = ("gsm8k", "math500", "college_math", "olympiadbench")


def _procedural(n: int, seed: int = 0) -> list[dict]:
    return [{"id": p.id, "question": p.question, "template": p.template} for p in generate_problems(n, seed=seed)]


def _numbers(text: str) -> list[str]:
    return sorted(re.findall(r"\d+", text))


# ------------------------------------------------------------------------------------------ language


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("What is 2 + 3?", None),
        ("  Compute $\\frac{1}{2} + \\frac{1}{3}$.  ", None),
        ("Janet’s ducks lay 16 eggs per day. How many?", "non_ascii"),  # curly apostrophe
        ("Wie viel ist 2 + 3 für Anna?", "non_ascii"),
        ("计算 2 + 3 的值", "non_ascii"),
        ("Find x \u00a0if x = 2.", "non_ascii"),  # no-break space
        ("Solve.", "too_short"),
        ("Compute 2+3", "too_short"),
        ("Compute 2 + 3", None),
    ],
)
def test_language_problem(question: str, reason: str | None) -> None:
    assert language_problem(question) == reason


def test_language_min_words_is_adjustable() -> None:
    assert language_problem("Solve.", min_words=1) is None
    assert language_problem("What is 2 + 3?", min_words=6) == "too_short"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is $x^2+3x$?", "what is  X^2 + 3X"),
        ("Find \\(\\left(\\dfrac{1}{2}\\right)^2\\).", "Find $(\\frac{1}{2})^2$"),
        ("It costs $1,000.", "it costs 1000"),
        ("\\text{and}\\quad p,\\, q", "and p q"),
    ],
)
def test_normalize_ignores_case_spacing_punctuation_and_latex_markup(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


def test_normalize_keeps_words_and_numbers_apart() -> None:
    assert normalize("Point (0,3), then 2.5 km.") == "point 0 3 then 2 5 km"
    assert normalize("x^2 + 3x") != normalize("x^2 + 4x")


# ---------------------------------------------------------------------------------- near-duplicates


def test_check_indexes_first_and_reports_it_for_later_copies() -> None:
    f = NearDuplicateFilter()
    assert f.check("a", "Mia buys 8 oranges at $11 each. How much does she spend in total?") is None
    assert f.check("b", "MIA buys 8 oranges at $11 each -- how much does she spend in total") == "a"
    assert f.check("c", "Mia buys 9 oranges at $11 each. How much does she spend in total?") is None
    assert len(f) == 2  # "b" was not indexed
    assert f.check("b", "A completely different question about the area of a field.") is None  # dropped id reused
    with pytest.raises(ValueError, match="already kept"):
        f.check("a", "anything")


def test_earliest_of_several_matching_kept_questions_wins() -> None:
    a = [f"t{i}" for i in range(100)]
    b = a[:30] + [f"u{i}" for i in range(30, 70)] + a[70:]  # Jaccard with a ~0.4: both kept at 0.5
    c = a[:30] + [f"u{i}" for i in range(30, 50)] + a[50:]  # ~0.63 with a and with b
    for first, second in (("a", "b"), ("b", "a")):
        f = NearDuplicateFilter(threshold=0.5)
        texts = {"a": " ".join(a), "b": " ".join(b)}
        assert f.check(first, texts[first]) is None and f.check(second, texts[second]) is None
        assert f.check("c", " ".join(c)) == first


def test_short_texts_match_only_exact_copies() -> None:
    f = NearDuplicateFilter()
    assert f.check("1", "Solve x.") is None
    assert f.check("2", "solve   X") == "1"
    assert f.check("3", "Solve y.") is None


def test_numbers_guard_keeps_template_mates_and_can_be_turned_off() -> None:
    long_q = (
        "Nora drives at 62 km per hour for 2 hours. Then she drives at 45 km per hour for 3 hours. After lunch "
        "she drives at 50 km per hour for 1 hour. The whole trip is 500 km. How many km does she still have to go?"
    )
    other = long_q.replace("500 km", "600 km")
    assert dedup([{"id": "a", "q": long_q}, {"id": "b", "q": other}], "q")[1] == []
    kept, dropped = dedup(
        [{"id": "a", "q": long_q}, {"id": "b", "q": other}], "q",
        dedup_filter=NearDuplicateFilter(numbers_must_match=False),
    )
    assert [r["id"] for r in kept] == ["a"] and dropped == [{"id": "b", "q": other, "duplicate_of": "a"}]


def test_procedural_questions_have_no_false_positives() -> None:
    """2,000 generated questions against each other: a drop is only ever the same problem.

    Same template, same numbers, other name or noun ("Hugo reads 10 pages..." / "Ravi reads 10 pages...") is
    the same problem and a fair drop; a different number or template never is (numbers guard, see the class).
    """
    recs = _procedural(2000)
    by_id = {r["id"]: r for r in recs}
    kept, dropped = dedup(recs, "question")
    assert len(kept) + len(dropped) == 2000
    false_positives = [
        d for d in dropped
        if d["template"] != by_id[d["duplicate_of"]]["template"]
        or _numbers(d["question"]) != _numbers(by_id[d["duplicate_of"]]["question"])
    ]
    assert false_positives == []
    # Verbatim repeats (the generator makes a few) are all dropped, pointing at their first copy.
    first: dict[str, str] = {}
    for r in recs:
        first.setdefault(normalize(r["question"]), r["id"])
    repeats = {r["id"]: first[normalize(r["question"])] for r in recs if first[normalize(r["question"])] != r["id"]}
    assert repeats and {d["id"]: d["duplicate_of"] for d in dropped if d["id"] in repeats} == repeats
    assert len(dropped) < 100, f"{len(dropped)} of 2,000 dropped: far more than the repeated problems"


def _variants(q: str, rng: random.Random, kinds: tuple[str, ...]) -> dict[str, str]:
    words = q.split()
    # A middle word that is no number: a changed number makes another problem, not a near-duplicate.
    i = next(j for j in range(len(words) // 2, len(words)) if not re.search(r"\d", words[j]))
    changed = words[:i] + ["really" if words[i].lower() != "really" else "truly"] + words[i + 1 :]
    out = {
        "case": q.upper() if rng.random() < 0.5 else q.lower(),
        "punct": q.replace(". ", "; ").replace("?", "").replace("$", ""),
        "space": "  " + "   ".join(words).replace(". ", ".\n") + " ",
        "word": " ".join(changed),
    }
    return {k: out[k] for k in kinds}


def test_planted_near_duplicates_are_dropped_with_their_source() -> None:
    rng = random.Random(7)
    base = _procedural(2000)
    base_kept, base_dropped = dedup(base, "question")
    # Case / punctuation / spacing variants normalise to the source: any source will do. A one-word edit of a
    # w-word question leaves a 3-gram Jaccard of (w - 5) / (w + 1): >= 45 words keeps it at >= 0.87, safely
    # above the 0.8 threshold for the 128-permutation estimate (shorter ones are caught only sometimes).
    plans = [(s, ("case", "punct", "space")) for s in rng.sample(base_kept, 40)]
    plans += [(s, ("word",)) for s in rng.sample([r for r in base_kept if len(r["question"].split()) >= 45], 20)]
    rows = list(base)
    planted: dict[str, str] = {}
    for s, kinds in plans:
        start = next(k for k, r in enumerate(rows) if r["id"] == s["id"]) + 1
        for kind, text in _variants(s["question"], rng, kinds).items():
            pid = f"plant-{s['id']}-{kind}"
            rows.insert(rng.randint(start, len(rows)), {"id": pid, "question": text, "template": "planted"})
            planted[pid] = s["id"]
    kept, dropped = dedup(rows, "question")
    assert len(kept) + len(dropped) == len(rows) == 2000 + 140
    got = {d["id"]: d["duplicate_of"] for d in dropped}
    assert {pid: got.get(pid) for pid in planted} == planted
    # Planting changes nothing else: the same distinct questions survive, in input order.
    assert [r["id"] for r in kept] == [r["id"] for r in base_kept]
    assert sorted(set(got) - set(planted)) == sorted(d["id"] for d in base_dropped)
    # Deterministic: a second run gives the same split; reversed input makes the other copy the survivor.
    assert dedup(rows, "question") == (kept, dropped)
    q = plans[0][0]["question"]
    pair = [{"id": "x", "question": q}, {"id": "y", "question": q.upper()}]
    assert dedup(pair, "question")[1][0]["duplicate_of"] == "x"
    assert dedup(pair[::-1], "question")[1][0]["duplicate_of"] == "y"


def test_dedup_names_a_missing_field() -> None:
    with pytest.raises(ValueError, match="record 1 has no field 'question'"):
        dedup([{"id": "a", "question": "What is 2 + 3?"}, {"id": "b", "text": "x"}], "question")


def test_dedup_throughput_20k() -> None:
    recs = _procedural(20_000, seed=1)
    start = time.perf_counter()
    kept, dropped = dedup(recs, "question")
    seconds = time.perf_counter() - start
    print(f"\nnear-dup filter: 20,000 questions in {seconds:.2f} s ({20_000 / seconds:,.0f} q/s), "
          f"{len(dropped)} dropped")
    assert len(kept) + len(dropped) == 20_000 and len(kept) > 19_000
    assert seconds < 60


# ---------------------------------------------------------------------------------- decontamination


def test_decontaminator_rules() -> None:
    test_q = " ".join(f"w{i}" for i in range(20))  # 20 distinct words
    short_test = "simplify the fraction frac k 2 12 k 32"  # 9 words: no 13-gram exists
    d = Decontaminator({"bench_a": [test_q, short_test, "Solve $x$."], "bench_b": [test_q, "tiny one"]})
    assert d.match("zz " + " ".join(f"w{i}" for i in range(13)) + " zz") == "bench_a"  # one 13-gram, first wins
    assert d.match("zz " + " ".join(f"w{i}" for i in range(12)) + " zz yy xx ww vv") is None  # only 12
    assert d.match(" ".join(f"w{i}" for i in range(3, 11))) == "bench_a"  # 8 words inside a test question
    assert d.match(" ".join(f"w{i}" for i in range(3, 10))) is None  # 7 words: too short to count as contained
    assert d.match("Please Simplify the fraction $\\frac{k^2-12 k+32}{}$ and also state its domain carefully now") \
        == "bench_a"  # contains a whole short test question
    assert d.match("solve \\(x\\)") == "bench_a"  # a tiny verbatim copy still counts
    assert d.match("TINY one!") == "bench_b"
    assert d.match("solve x now") is None and d.match("") is None


@pytest.fixture(scope="module")
def decon(shared_data: Path) -> Decontaminator:
    return Decontaminator.from_benchmarks(BENCHMARKS, data_dir=str(shared_data))


@pytest.fixture(scope="module")
def test_questions(shared_data: Path) -> dict[str, list[str]]:
    return {n: [it.question for it in load_benchmark(n, path=str(shared_data / n / "test.jsonl"))] for n in BENCHMARKS}


def _near_verbatim(q: str) -> dict[str, str]:
    out = {
        "verbatim": q,
        "case": q.swapcase(),
        "punct": q.replace(", ", " ; ").replace("?", " ").rstrip(".") + "!",
        "space": "\n  " + re.sub(r" ", "   ", q) + "\t",
        "dollar": q.replace("$", ""),
    }
    if len(normalize(q).split()) >= 8:  # tiny questions only match verbatim (see Decontaminator)
        out["prefix"] = "Here is a nice problem for you to think about. " + q
    return out


def test_planted_benchmark_questions_are_dropped_and_procedural_ones_kept(
    decon: Decontaminator, test_questions: dict[str, list[str]]
) -> None:
    rng = random.Random(3)
    rows = _procedural(2000)
    planted: dict[str, str] = {}
    for name, questions in test_questions.items():
        for k in rng.sample(range(len(questions)), 15):
            for kind, text in _near_verbatim(questions[k]).items():
                pid = f"{name}-{k}-{kind}"
                rows.insert(rng.randint(0, len(rows)), {"id": pid, "question": text})
                planted[pid] = name
    assert sum(pid.endswith("-prefix") for pid in planted) >= 40
    start = time.perf_counter()
    kept, dropped = decontaminate(rows, "question", decon)
    seconds = time.perf_counter() - start
    print(f"\ndecontamination: {len(rows):,} questions in {seconds:.3f} s ({len(rows) / seconds:,.0f} q/s), "
          f"{len(decon):,} test 13-grams")
    assert {d["id"]: d["contaminated_with"] for d in dropped} == planted
    assert [r["id"] for r in kept] == [r["id"] for r in rows if r["id"] not in planted]
    assert len(kept) == 2000


def test_every_test_question_matches_its_own_benchmark(
    decon: Decontaminator, test_questions: dict[str, list[str]]
) -> None:
    missed = {n: [q for q in qs if decon.match(q) is None] for n, qs in test_questions.items()}
    assert missed == {n: [] for n in BENCHMARKS}


def test_gsm8k_train_is_mostly_clean(decon: Decontaminator, shared_data: Path) -> None:
    train = load_benchmark("gsm8k", path=str(shared_data / "gsm8k" / "train.jsonl"), split="train", limit=1000)
    hits = [q.question for q in train if decon.match(q.question) is not None]
    rate = len(hits) / len(train)
    print(f"\nGSM8K train contamination (first 1,000 questions): {rate:.2%} ({len(hits)})")
    assert len(train) == 1000 and rate < 0.02
