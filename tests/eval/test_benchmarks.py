"""Benchmark loaders: the shared copies, hub specs, limits, field mappings and schema errors."""

import json
from pathlib import Path

import pytest

import sq_jax.eval.benchmarks as benchmarks
from sq_jax.data.sources import DataError
from sq_jax.eval.benchmarks import BenchmarkItem, load_benchmark

LOCAL = {
    "gsm8k": ("gsm8k/test.jsonl", 1319),
    "math500": ("math500/test.jsonl", 500),
    "college_math": ("college_math/test.jsonl", 2818),
    "olympiadbench": ("olympiadbench/test.jsonl", 675),
}


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_shared_copies_load_with_stable_ids(shared_data: Path, name: str) -> None:
    rel, count = LOCAL[name]
    items = load_benchmark(name, path=str(shared_data / rel))
    assert len(items) == count
    assert len({it.id for it in items}) == count
    assert all(it.benchmark == name and it.question.strip() and it.gold for it in items)
    assert [it.id for it in load_benchmark(name, path=str(shared_data / rel), limit=5)] == [it.id for it in items[:5]]


def test_item_fields(shared_data: Path) -> None:
    gsm = load_benchmark("gsm8k", path=str(shared_data / "gsm8k/test.jsonl"), limit=1)[0]
    assert (gsm.id, gsm.gold, gsm.multiple, gsm.unit) == ("gsm8k-0", "18", False, None)
    assert gsm.gold_solution is not None and gsm.gold_solution.endswith("#### 18")
    m500 = load_benchmark("math500", path=str(shared_data / "math500/test.jsonl"), limit=1)[0]
    assert m500.gold == "\\left( 3, \\frac{\\pi}{2} \\right)" and "\\boxed" in (m500.gold_solution or "")
    olympiad = load_benchmark("olympiadbench", path=str(shared_data / "olympiadbench/test.jsonl"))
    first = olympiad[0]
    assert first.id == "olympiadbench-1606" and first.gold == ["2"] and isinstance(first.gold_solution, str)
    assert sum(it.multiple for it in olympiad) == 94
    assert {it.unit for it in olympiad} >= {None, "km", "minute", "%"}
    college = load_benchmark("college_math", path=str(shared_data / "college_math/test.jsonl"), limit=1)[0]
    assert (college.id, college.gold) == ("college_math-0", "$10-4 n$")


def test_grade_request_from_item() -> None:
    item = BenchmarkItem("x-1", "q?", ["1", "2"], multiple=True, unit="cm")
    req = item.grade_request("\\boxed{1, 2}")
    assert (req.gold, req.multiple, req.unit, req.extracted) == (["1", "2"], True, "cm", False)
    assert item.grade_request("1, 2", extracted=True).extracted


def test_math_full_uses_boxed_solution_when_no_answer_column(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "math.jsonl", [{"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$."}])
    (item,) = load_benchmark("math", path=path)
    assert (item.id, item.gold) == ("math-0", "\\frac{1}{2}")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "solution": "no box"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*'solution'"):
        load_benchmark("math", path=bad)


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q2"}])
    with pytest.raises(DataError, match=r"gsm\.jsonl:2: required field 'answer' is missing"):
        load_benchmark("gsm8k", path=path)
    olympiad = _write_jsonl(tmp_path / "ob.jsonl", [{"question": "q", "final_answer": 3}])
    with pytest.raises(DataError, match=r"ob\.jsonl:1: field 'final_answer'"):
        load_benchmark("olympiadbench", path=olympiad)


def test_gsm8k_answer_without_marker_is_an_error(tmp_path: Path) -> None:
    rows = [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "7"}]
    path = _write_jsonl(tmp_path / "gsm.jsonl", rows)
    with pytest.raises(DataError, match=r"gsm\.jsonl:2: field 'answer' has no '####"):
        load_benchmark("gsm8k", path=path)


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:2: malformed JSON"):
        load_benchmark("college_math", path=str(path))


def test_jsonl_field_mapping(tmp_path: Path) -> None:
    rows = [{"uid": "a", "prompt": "1+1?", "target": 2}, {"uid": "b", "prompt": "2+2?", "target": "4"}]
    path = _write_jsonl(tmp_path / "mine.jsonl", rows)
    items = load_benchmark(f"jsonl:{path}", question_field="prompt", answer_field="target")
    assert [(it.id, it.question, it.gold, it.benchmark) for it in items] == [
        ("jsonl-0", "1+1?", "2", "jsonl"),
        ("jsonl-1", "2+2?", "4", "jsonl"),
    ]
    assert [it.id for it in load_benchmark(f"jsonl:{path}", question_field="prompt", answer_field="target",
                                           id_field="uid", limit=1)] == ["a"]
    with pytest.raises(DataError, match=r"mine\.jsonl:1: required field 'question' \(read from source field 'q'\)"):
        load_benchmark(f"jsonl:{path}", question_field="q", answer_field="target")


def test_hub_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_read_records(spec, *, fields, field_map, split, limit):
        calls.append((spec, split, limit))
        return []

    monkeypatch.setattr(benchmarks, "read_records", fake_read_records)
    load_benchmark("gsm8k")
    load_benchmark("math500", limit=3)
    load_benchmark("olympiadbench")
    load_benchmark("math", split="train")
    assert calls[:3] == [
        ("hf:openai/gsm8k:main", "test", None),
        ("hf:HuggingFaceH4/MATH-500", "test", 3),
        ("hf:Hothan/OlympiadBench:OE_TO_maths_en_COMP", "train", None),
    ]
    assert [c[0] for c in calls[3:]] == [f"hf:EleutherAI/hendrycks_math:{s}" for s in benchmarks.MATH_SUBJECTS]
    assert {c[1] for c in calls[3:]} == {"train"}


def test_unknown_names_and_missing_paths() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'aime'"):
        load_benchmark("aime")
    with pytest.raises(ValueError, match="college_math.*path"):
        load_benchmark("college_math")
    with pytest.raises(ValueError, match="not both"):
        load_benchmark("jsonl:/x.jsonl", path="/y.jsonl")
