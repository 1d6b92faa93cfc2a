"""The streaming filters (issue 15): the numpy near-duplicate index gives datasketch's verdicts at <= 2 KiB a
question, the filter stages stream their records/ parts and split them as the list-based functions did, and the
benchmark's code path (benchmarks/pipeline_scale.py) runs on a few thousand rows."""

from __future__ import annotations

import random
import re
import sys
from bisect import bisect_right
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from sq_jax.data.dataset import PartWriter, iter_rows
from sq_jax.pipeline.filters import _DIGITS, Decontaminator, NearDuplicateFilter, language_problem, normalize
from sq_jax.pipeline.minhash import SortedMultiMap, lsh_bands, permutations, signatures
from sq_jax.pipeline.stages import StageContext
from sq_jax.pipeline.stages import filtering as stages
from sq_jax.toy.problems import generate_problems

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pipeline_scale  # noqa: E402

# ------------------------------------------------------------------------ the reference: datasketch, one by one


class ReferenceFilter:
    """The datasketch implementation the numpy index replaced (sq_jax/pipeline/filters.py before issue 15)."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3, seed: int = 1, *,
                 numbers_must_match: bool = True) -> None:
        self.shingle, self.numbers_must_match = shingle, numbers_must_match
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        self._empty = MinHash(num_perm=num_perm, seed=seed)
        self._min_equal = threshold * num_perm - 1e-9
        self._ids: list[str] = []
        self._signatures: list[np.ndarray] = []
        self._numbers: list[tuple[str, ...]] = []
        self._kept: set[str] = set()

    def check(self, id: str, text: str) -> str | None:
        if id in self._kept:
            raise ValueError(f"id {id!r} was already kept by this filter; ids must be unique")
        words = normalize(text).split()
        n = self.shingle
        shingles = ([" ".join(words).encode()] if len(words) < n
                    else [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)])
        minhash = self._empty.copy()
        minhash.update_batch(shingles)
        numbers = tuple(sorted(_DIGITS.findall(normalize(text)))) if self.numbers_must_match else ()
        for key in sorted(self._lsh.query(minhash)):
            if numbers == self._numbers[key] and np.count_nonzero(
                    minhash.hashvalues == self._signatures[key]) >= self._min_equal:
                return self._ids[key]
        self._lsh.insert(len(self._ids), minhash, check_duplication=False)
        self._ids.append(id)
        self._signatures.append(minhash.hashvalues)
        self._numbers.append(numbers)
        self._kept.add(id)
        return None


def reference_match(decon: Decontaminator, question: str) -> str | None:
    """Decontaminator.match before its lead-gram shortcut: every n-gram, then every window of each short length."""
    norm = normalize(question)
    if norm in decon._exact:
        return decon._exact[norm]
    words, n = norm.split(), decon.n
    if len(words) >= n:
        for i in range(len(words) - n + 1):
            if (hit := decon._grams.get(" ".join(words[i : i + n]))) is not None:
                return hit
        for length in decon._short_lengths:
            for i in range(len(words) - length + 1):
                if (hit := decon._short.get(" ".join(words[i : i + length]))) is not None:
                    return hit
        return None
    if len(words) >= decon.min_words and (pos := decon._haystack.find(f" {norm} ")) >= 0:
        return decon._names[bisect_right(decon._starts, pos) - 1]
    return None


# ------------------------------------------------------------------------------------------ planted input


def _edit(kind: str, q: str, rng: random.Random) -> str | None:
    words = q.split()
    if kind == "copy":
        return q
    if kind == "latex":
        return q.replace("$", "").replace("(", "\\left(").replace(")", "\\right)").replace("\\frac", "\\dfrac")
    if kind == "punct":
        return "  " + q.upper().replace(". ", " ; ").replace("?", " ?! ")
    plain = [i for i, w in enumerate(words) if (w.isdigit() if kind == "number" else w.isalpha())]
    if not plain:
        return None
    i = rng.choice(plain)
    # A number no generated question has (a +1 edit can give an existing template mate: the same problem).
    new = str(int(words[i]) + 1000 + rng.randrange(9000)) if kind == "number" else (
        "really" if words[i] != "really" else "truly")
    return " ".join(words[:i] + [new] + words[i + 1 :])


def _planted_rows(shared_data: Path, count: int = 2500, seed: int = 3) -> list[dict]:
    """Procedural and real ScaleQuest questions, with copies, LaTeX/punctuation variants, one-word and number-only
    edits (of originals and of earlier plants) placed after their source."""
    rng = random.Random(seed)
    rows = [{"id": p.id, "question": p.question} for p in generate_problems(count, seed=seed)]
    rows += [{"id": f"sq{i}", "question": q} for i, q in enumerate(pipeline_scale._real_questions(shared_data))]
    rng.shuffle(rows)
    for k in range(count // 4):
        at = rng.randrange(len(rows))
        kind = rng.choice(("copy", "latex", "punct", "word", "number", "number"))
        text = _edit(kind, rows[at]["question"], rng)
        if text is not None:
            rows.insert(rng.randint(at + 1, len(rows)), {"id": f"plant{k}-{kind}", "question": text})
    return rows


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    return _planted_rows(shared_data)


def _reference_verdicts(rows: list[dict], **kw) -> list[str | None]:
    ref = ReferenceFilter(**kw)
    return [ref.check(r["id"], r["question"]) for r in rows]


@pytest.fixture(scope="module")
def reference(rows: list[dict]) -> list[str | None]:
    return _reference_verdicts(rows)


# ------------------------------------------------------------------------------------------ the index


def test_signatures_and_bands_are_datasketchs(rows: list[dict]) -> None:
    a, b = permutations(128, 1)
    texts = [normalize(r["question"]) for r in rows[:300]] + ["", "two words", "x"]
    got = signatures(texts, 3, a, b)
    for text, sig in zip(texts, got):
        words = text.split()
        ref = MinHash(num_perm=128, seed=1)
        ref.update_batch([" ".join(words).encode()] if len(words) < 3
                         else [" ".join(words[i : i + 3]).encode() for i in range(len(words) - 2)])
        assert sig.dtype == np.uint32 and np.array_equal(sig, ref.hashvalues), text
    for threshold, num_perm in ((0.8, 128), (0.5, 128), (0.9, 64), (0.7, 256)):
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        assert lsh_bands(threshold, num_perm) == (lsh.b, lsh.r)


@pytest.mark.parametrize("batch", [1, 7, 500, 100_000])
def test_verdicts_equal_datasketch_one_by_one(rows: list[dict], reference: list[str | None], batch: int) -> None:
    if batch == 1:  # one numpy round per question: a prefix is enough
        rows, reference = rows[:600], reference[:600]
    index = NearDuplicateFilter()
    got: list[str | None] = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        got += index.check_batch([r["id"] for r in part], [r["question"] for r in part])
    assert got == reference
    # The planted set exercises every rule: copies and variants dropped, number-only edits (another problem) kept.
    by_kind = {kind: [v for r, v in zip(rows, got) if r["id"].endswith(f"-{kind}")]
               for kind in ("copy", "latex", "punct", "word", "number")}
    assert all(v is not None for kind in ("copy", "latex", "punct") for v in by_kind[kind])
    assert len(by_kind["number"]) > (20 if batch > 1 else 0) and all(v is None for v in by_kind["number"])
    if batch > 1:
        assert 0 < sum(v is not None for v in by_kind["word"]) < len(by_kind["word"])  # long ones caught, short not
    assert len(index) == sum(v is None for v in got)


@pytest.mark.parametrize("kw", [{"threshold": 0.5}, {"numbers_must_match": False}, {"shingle": 2, "seed": 5}])
def test_verdicts_equal_datasketch_with_other_settings(rows: list[dict], kw: dict) -> None:
    subset = rows[:1200]
    index = NearDuplicateFilter(**kw)
    got = index.check_batch([r["id"] for r in subset], [r["question"] for r in subset])
    assert got == _reference_verdicts(subset, **kw)
    assert sum(v is not None for v in got) > 30


def test_in_batch_matches_follow_one_by_one_order() -> None:
    a = [f"t{i}" for i in range(100)]
    b = a[:30] + [f"u{i}" for i in range(30, 70)] + a[70:]
    c = a[:30] + [f"u{i}" for i in range(30, 50)] + a[50:]  # ~0.63 with a and with b
    index = NearDuplicateFilter(threshold=0.5)
    assert index.check_batch(["b", "a", "c", "d"], [" ".join(x) for x in (b, a, c, c)]) == [None, None, "b", "b"]
    with pytest.raises(ValueError, match="'a' was already kept"):
        index.check_batch(["e", "a"], ["something else entirely here", "and another"])
    assert len(index) == 2  # the failed batch indexed nothing
    # An id may come back after its question was dropped, not after it was kept (as one by one).
    assert index.check_batch(["c", "z"], ["a brand new question about areas", "one more new question"]) == [None, None]
    with pytest.raises(ValueError, match="'y' was already kept"):
        index.check_batch(["y", "y"], ["first question with words", "second question with words"])


def test_index_memory_per_question(rows: list[dict], reference: list[str | None]) -> None:
    index = NearDuplicateFilter()
    for start in range(0, len(rows), 1000):
        part = rows[start : start + 1000]
        index.check_batch([r["id"] for r in part], [r["question"] for r in part])
    per_question = index.nbytes / len(index)
    print(f"\nnear-duplicate index: {index.nbytes:,} bytes for {len(index):,} kept questions "
          f"({per_question:.0f} B each)")
    assert per_question <= 2048
    # Every per-question store is a numpy array (or one bytearray of ids): no Python object per question.
    stores = vars(index).values()
    assert not any(isinstance(v, (list, dict, set)) and len(v) > 20 for v in stores)


def test_sorted_multimap_returns_every_value_of_a_key() -> None:
    table = SortedMultiMap()
    table.insert(np.array([5, 3, 5], dtype=np.uint64), np.array([0, 1, 2]))
    table.insert(np.array([5, 9], dtype=np.uint64), np.array([3, 4]))
    hit, values = table.lookup(np.array([5, 7, 9, 3], dtype=np.uint64))
    assert sorted(zip(hit.tolist(), values.tolist())) == [(0, 0), (0, 2), (0, 3), (2, 4), (3, 1)]
    assert table.nbytes == 5 * 16


# ------------------------------------------------------------------------------------------ the stages


def _old_stages(rows: list[dict], decon: Decontaminator) -> dict[str, tuple[list, list, dict]]:
    """language -> dedup -> decontaminate as the list-based stages did them, with the reference filter."""
    out = {}
    kept, dropped, stats = [], [], {}
    for r in rows:
        reason = language_problem(r["question"])
        if reason is None:
            kept.append(r)
        else:
            stats[f"dropped_{reason}"] = stats.get(f"dropped_{reason}", 0) + 1
            dropped.append({**r, "reason": reason})
    out["language"] = (kept, dropped, {**stats, "input": len(rows), "kept": len(kept), "dropped": len(dropped)})
    ref = ReferenceFilter(seed=0)
    rows, kept, dropped = kept, [], []
    for r in rows:
        dup = ref.check(r["id"], r["question"])
        (kept.append(r) if dup is None else dropped.append({**r, "duplicate_of": dup}))
    out["dedup"] = (kept, dropped, {"dropped_near_duplicate": len(dropped), "input": len(rows), "kept": len(kept),
                                    "dropped": len(dropped)})
    rows, kept, dropped, per = kept, [], [], {}
    for r in rows:
        name = reference_match(decon, r["question"])
        if name is None:
            kept.append(r)
        else:
            dropped.append({**r, "contaminated_with": name})
            per[f"dropped_{name}"] = per.get(f"dropped_{name}", 0) + 1
    out["decontaminate"] = (kept, dropped, {"dropped_contaminated": len(dropped), **per, "input": len(rows),
                                            "kept": len(kept), "dropped": len(dropped)})
    return out


def test_streaming_stages_split_as_the_list_based_ones(rows: list[dict], shared_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def all_in_a_list(self: StageContext, role: str) -> list:
        raise AssertionError(f"stage {self.name!r} loaded all of {role!r} into a list")

    monkeypatch.setattr(StageContext, "records", all_in_a_list)  # the filters must stream
    rng = random.Random(1)
    bench = pipeline_scale._benchmark_questions(shared_data)
    rows = list(rows)
    for i, text in enumerate(rng.sample(bench, 40) + ["Solve x.", "   ", "Wie viel ist 2 + 3 für Anna?"]):
        rows.insert(rng.randrange(len(rows)), {"id": f"extra{i}", "question": text, "note": "planted"})
    with PartWriter(tmp_path / "questions" / "records", part_rows=250) as writer:  # many parts to stream through
        writer.write_all(rows)
    cfg = stages.DecontaminationConfig(data_dir=str(shared_data))
    expected = _old_stages(rows, Decontaminator.from_benchmarks(cfg.benchmarks, data_dir=cfg.data_dir))
    upstream = "questions"
    for name, run, config in (("language", stages.language, stages.LanguageConfig()),
                              ("dedup", stages.near_duplicates, stages.DedupConfig()),
                              ("decontaminate", stages.contamination, cfg)):
        ctx = StageContext(name=name, dir=tmp_path / name, inputs={"questions": tmp_path / upstream}, seed=0,
                           output_dir=tmp_path)
        stats = run(ctx, config)
        kept, dropped, old_stats = expected[name]
        assert list(iter_rows(ctx.dir / "records")) == kept, name
        written = list(iter_rows(ctx.dir / "dropped"))
        if name == "decontaminate":  # each dropped row also carries the words that matched a test question
            index = Decontaminator.from_benchmarks(cfg.benchmarks, data_dir=cfg.data_dir)
            ngrams = [row.pop("contaminated_ngram") for row in written]
            assert all(g in normalize(row["question"]) and index.match(g) for g, row in zip(ngrams, written))
        assert written == dropped, name
        assert stats == old_stats and list(stats) == list(old_stats), name
        assert dropped, f"{name} dropped nothing: the comparison shows little"
        upstream = name


def test_decontaminator_shortcut_matches_every_window(shared_data: Path) -> None:
    decon = Decontaminator.from_benchmarks(data_dir=str(shared_data))
    rng = random.Random(2)
    bench = pipeline_scale._benchmark_questions(shared_data)
    texts = pipeline_scale._real_questions(shared_data)
    for q in rng.sample(bench, 300):
        words = q.split()
        cut = rng.randrange(len(words))
        texts += [q, "Please answer: " + q, " ".join(words[cut:]) + " and more words after it here",
                  " ".join(words[: max(8, cut)])]
    got = [decon.match(t) for t in texts]
    assert got == [reference_match(decon, t) for t in texts]
    assert 300 < sum(g is not None for g in got) < len(texts)


# ------------------------------------------------------------------------------------------ the benchmark


def test_benchmark_filters_on_a_few_thousand_rows(shared_data: Path, tmp_path: Path) -> None:
    results = pipeline_scale.filters(tmp_path, 4000, shared_data.resolve(), run=pipeline_scale.run_filter_stage)
    planted = results[0]["planted"]
    language, dedup_row, decon = (r["stats"] for r in results[1:])
    assert [r["stage"] for r in results[1:]] == list(pipeline_scale.FILTER_STAGES)
    assert language["input"] == 4000 and dedup_row["input"] == language["kept"] == 4000 - language["dropped"]
    # Copies, case and markup variants are always dropped, number-only edits never; benchmark questions go at
    # decontamination; the random-word rows all pass.
    outcomes = pipeline_scale.planted_outcomes(tmp_path)
    for kind in ("copy", "case", "markup"):
        assert outcomes[kind] == {"dedup": planted[kind]}, kind
    assert outcomes["number_edit"] == {"kept": planted["number_edit"]}
    assert "none" not in outcomes  # no random-word row is dropped
    for kind in ("non_ascii", "too_short", "empty"):
        assert outcomes[kind] == {"language": planted[kind]}, kind
    assert decon["input"] == dedup_row["kept"]
    assert decon["dropped_contaminated"] >= 1
    assert results[2]["index_bytes"] / results[2]["index_rows"] <= 2048
    assert all(r["peak_rss"] > 0 for r in results[1:])
    table = pipeline_scale.format_table(results)
    assert re.search(r"\| dedup \| [\d,]+ \| \d+ \|", table)
