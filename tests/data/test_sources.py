"""Tests for record reading / writing with provenance (sq_jax.data.sources)."""

import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sq_jax.data.sources import DataError, Record, read_records, write_jsonl
import sq_jax.toy  # noqa: F401  (registers the procedural: corpora)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_line_numbers_skip_blank_lines(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", ['{"q": "one"}', "", "   ", '{"q": "two"}', '{"q": "three"}'])
    recs = read_records(f)
    assert [r.data["q"] for r in recs] == ["one", "two", "three"]
    assert [r.line for r in recs] == [1, 4, 5]
    assert all(r.source == str(f) for r in recs)
    assert recs[1].where == f"{f}:4"


def test_json_suffix_is_json_lines(tmp_path):
    f = write_lines(tmp_path / "a.json", ['{"q": 1}', '{"q": 2}'])
    assert [r.data for r in read_records(f)] == [{"q": 1}, {"q": 2}]


def test_field_map_renames_and_keeps_other_fields(tmp_path):
    f = write_lines(tmp_path / "g.jsonl", [json.dumps({"question": "Q1", "answer": "A1", "id": 7})])
    (rec,) = read_records(f, fields=["query", "answer"], field_map={"query": "question"})
    assert rec.data == {"query": "Q1", "answer": "A1", "id": 7}


def test_field_map_swap(tmp_path):
    f = write_lines(tmp_path / "s.jsonl", [json.dumps({"a": 1, "b": 2})])
    (rec,) = read_records(f, field_map={"a": "b", "b": "a"})
    assert rec.data == {"a": 2, "b": 1}


def test_missing_required_field_error_names_line_field_and_present_fields(tmp_path):
    f = write_lines(tmp_path / "m.jsonl", ['{"query": "x", "response": "y"}', '{"query": "x2", "other": 1}'])
    with pytest.raises(DataError) as exc:
        read_records(f, fields=["query", "response"])
    msg = str(exc.value)
    assert f"{f}:2" in msg
    assert "'response'" in msg and "missing" in msg
    assert "'other'" in msg and "'query'" in msg


def test_missing_mapped_field_mentions_source_field(tmp_path):
    f = write_lines(tmp_path / "m.jsonl", ['{"prompt": "x"}'])
    with pytest.raises(DataError, match=r"m\.jsonl:1: required field 'query' \(read from source field 'question'\)"):
        read_records(f, fields=["query"], field_map={"query": "question"})


def test_null_required_field_is_error(tmp_path):
    f = write_lines(tmp_path / "n.jsonl", ['{"query": "a"}', '{"query": null}'])
    with pytest.raises(DataError, match=r"n\.jsonl:2: required field 'query' is null"):
        read_records(f, fields=["query"])


def test_malformed_json_line_error(tmp_path):
    f = write_lines(tmp_path / "bad.jsonl", ['{"q": 1}', "", '{"q": 2,,}'])
    with pytest.raises(DataError) as exc:
        read_records(f)
    msg = str(exc.value)
    assert f"{f}:3" in msg
    assert "malformed JSON" in msg and "Expecting" in msg  # the json module's own reason is kept


def test_non_object_line_error(tmp_path):
    f = write_lines(tmp_path / "list.jsonl", ['{"q": 1}', "[1, 2]"])
    with pytest.raises(DataError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        read_records(f)


def test_json_array_file_gets_hint(tmp_path):
    f = tmp_path / "arr.json"
    f.write_text('[\n{"q": 1}\n]\n')
    with pytest.raises(DataError, match=r"arr\.json:1: .*JSON array"):
        read_records(f)


def test_empty_file_error_and_allow_empty(tmp_path):
    f = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        read_records(f)
    assert read_records(f, allow_empty=True) == []


def test_limit_stops_reading(tmp_path):
    # Line 4 is malformed: reaching it would raise, so passing proves the reader stopped early.
    f = write_lines(tmp_path / "big.jsonl", ['{"i": 0}', '{"i": 1}', '{"i": 2}', "{not json"])
    recs = read_records(f, limit=2)
    assert [r.data["i"] for r in recs] == [0, 1]
    with pytest.raises(DataError, match=r"big\.jsonl:4"):
        read_records(f)


def test_unsupported_suffix(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_records(f)


# --- Parquet, directories, save_to_disk ----------------------------------------------------------


def test_parquet_rows_numbered_from_one(tmp_path):
    f = write_parquet(tmp_path / "p.parquet", [{"question": f"q{i}", "answer": str(i)} for i in range(5)])
    recs = read_records(f, fields=["query"], field_map={"query": "question"})
    assert [r.line for r in recs] == [1, 2, 3, 4, 5]
    assert recs[3].data == {"query": "q3", "answer": "3"}
    assert recs[0].source == str(f)
    assert [r.data["question"] for r in read_records(f, limit=2)] == ["q0", "q1"]


def test_parquet_null_field_error_has_row(tmp_path):
    f = write_parquet(tmp_path / "p.parquet", [{"query": "a"}, {"query": None}])
    with pytest.raises(DataError, match=r"p\.parquet:2: required field 'query' is null"):
        read_records(f, fields=["query"])


def test_directory_of_mixed_shards_sorted_and_manifest_ignored(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    write_lines(d / "part-002.jsonl", ['{"i": 4}', '{"i": 5}'])
    write_parquet(d / "part-001.parquet", [{"i": 2}, {"i": 3}])
    write_lines(d / "part-000.jsonl", ['{"i": 0}', "", '{"i": 1}'])
    (d / "_manifest.json").write_text('{"shards": 3}\n')
    (d / ".hidden.jsonl").write_text("garbage\n")
    (d / "notes.txt").write_text("ignored\n")
    recs = read_records(d)
    assert [r.data["i"] for r in recs] == [0, 1, 2, 3, 4, 5]
    assert [(Path(r.source).name, r.line) for r in recs] == [
        ("part-000.jsonl", 1), ("part-000.jsonl", 3),
        ("part-001.parquet", 1), ("part-001.parquet", 2),
        ("part-002.jsonl", 1), ("part-002.jsonl", 2),
    ]
    assert [r.data["i"] for r in read_records(d, limit=3)] == [0, 1, 2]


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path)
    assert read_records(tmp_path, allow_empty=True) == []


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    rows = [{"question": "q0", "answer": "a0"}, {"question": "q1", "answer": "a1"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    recs = read_records(tmp_path / "ds", fields=["query"], field_map={"query": "question"})
    assert [(r.data["query"], r.line) for r in recs] == [("q0", 1), ("q1", 2)]

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    test = read_records(tmp_path / "dd", split="test")
    assert [r.data for r in test] == rows[:1]
    assert test[0].source.endswith("[test]")
    with pytest.raises(DataError, match=r"no split 'validation'.*\['test', 'train'\]"):
        read_records(tmp_path / "dd", split="validation")


# --- spec resolution ----------------------------------------------------------------------------


def fail_load_dataset(*args, **kwargs):
    raise AssertionError(f"hub must not be queried for a local path: {args} {kwargs}")


@pytest.mark.parametrize("spec", ["./nope.jsonl", "/definitely/not/here.jsonl", "~/no_such_sq_jax_dir/x", "a/b/c",
                                  "missing.parquet"])
def test_nonexistent_local_path(monkeypatch, spec):
    monkeypatch.setattr(datasets, "load_dataset", fail_load_dataset)
    with pytest.raises(DataError, match="no such file or directory"):
        read_records(spec)


def test_hf_spec_calls_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([{"question": "q0"}, {"question": "q1"}, {"question": "q2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    recs = read_records("hf:org/name:cfg", split="test", fields=["query"], field_map={"query": "question"}, limit=2)
    assert calls == [(("org/name", "cfg"), {"split": "test"})]
    assert [(r.data, r.line) for r in recs] == [({"query": "q0"}, 1), ({"query": "q1"}, 2)]
    assert "org/name" in recs[0].source and "test" in recs[0].source

    calls.clear()
    read_records("org/name")  # plain hub id, not an existing path
    assert calls == [(("org/name", None), {"split": "train"})]


def test_hub_failure_is_data_error(monkeypatch):
    def boom(*args, **kwargs):
        raise FileNotFoundError("Couldn't find dataset")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError, match=r"hf:org/name.*'train'.*Couldn't find"):
        read_records("hf:org/name")


def test_existing_relative_path_beats_hub_id(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", fail_load_dataset)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    write_lines(tmp_path / "org" / "name", ['{"q": 1}'])  # no suffix: a file, but no known type
    with pytest.raises(DataError, match="unsupported file type"):
        read_records("org/name")


# --- real data ----------------------------------------------------------------------------------


def test_real_scalequest_samples(shared_data):
    recs = read_records(shared_data / "scalequest" / "samples.jsonl", fields=["query", "response"])
    assert len(recs) == 100
    assert [r.line for r in recs] == list(range(1, 101))
    assert all(isinstance(r.data["query"], str) and r.data["response"] for r in recs)


def test_real_gsm8k_test(shared_data):
    recs = read_records(str(shared_data / "gsm8k" / "test.jsonl"), fields=["query", "answer"],
                        field_map={"query": "question"})
    assert len(recs) == 1319
    assert all("####" in r.data["answer"] and "question" not in r.data for r in recs)


# --- writing ------------------------------------------------------------------------------------


def test_write_jsonl_round_trip_non_ascii(tmp_path):
    rows = [{"query": "Combien font 3 × 4 ? 答案是多少", "response": "\\boxed{12} ✓"}, {"query": "ß", "n": 1}]
    out = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(out, rows) == 2
    raw = out.read_text(encoding="utf-8")
    assert "答案" in raw and "\\u" not in raw  # ensure_ascii=False
    assert [r.data for r in read_records(out)] == rows
    assert os.listdir(out.parent) == ["out.jsonl"]


def test_write_jsonl_atomic_on_failure(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"v": "old"}])

    def rows():
        yield {"v": "new"}
        raise RuntimeError("pipeline died")

    with pytest.raises(RuntimeError, match="pipeline died"):
        write_jsonl(out, rows())
    assert [r.data for r in read_records(out)] == [{"v": "old"}]  # old content intact
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind

    with pytest.raises(TypeError):
        write_jsonl(out, [{"v": object()}])
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_record_is_frozen():
    r = Record({"a": 1}, "x.jsonl", 3)
    with pytest.raises(AttributeError):
        r.line = 4  # type: ignore[misc]


def test_procedural_source_is_deterministic_and_validated():
    from sq_jax.data.sources import DataError as _DataError

    records = read_records("procedural:50:3", fields=["question", "answer"])
    assert len(records) == 50 and records[0].line == 1 and records[0].source == "procedural:50:3"
    assert [r.data for r in read_records("procedural:50:3")] == [r.data for r in records]
    assert records[0].data["id"] == "toy-s3-000000"
    assert read_records("procedural:50:4")[0].data != records[0].data
    for bad in ("procedural:x", "procedural:", "procedural:5:1:2", "procedural:-1"):
        with pytest.raises(_DataError, match="expected procedural:COUNT"):
            read_records(bad)
