"""Datasets and exports behind URLs. fsspec's in-memory filesystem stands in for a bucket: gs:// goes through the
same calls (fsspec + gcsfs), so what is tested here is everything but Google's transport."""

from __future__ import annotations

import json
import uuid

import datasets
import fsspec
import pytest

from sq_jax.data.remote import fetched, is_url, upload
from sq_jax.data.sources import DataError, read_records
from sq_jax.pipeline.stages import StageContext
from sq_jax.pipeline.stages.export import ExportConfig, export


@pytest.fixture()
def bucket() -> str:
    return f"memory://bucket-{uuid.uuid4().hex[:8]}"


def _put(url: str, text: str) -> None:
    with fsspec.open(url, "w") as f:
        f.write(text)


def test_is_url():
    assert is_url("gs://b/x.jsonl") and is_url("memory://b") and is_url("s3://b/k")
    assert not is_url("/data/x.jsonl") and not is_url("hf:openai/gsm8k") and not is_url("C:\\data\\x.jsonl")


def test_read_records_from_a_url_names_the_url(bucket):
    _put(f"{bucket}/seeds/train-00000.jsonl", '{"question": "a"}\n{"question": "b"}\n')
    _put(f"{bucket}/seeds/train-00001.jsonl", '{"question": "c"}\n')
    _put(f"{bucket}/one.jsonl", '{"question": "x"}\n')
    folder = read_records(f"{bucket}/seeds", fields=["question"])
    assert [r.data["question"] for r in folder] == ["a", "b", "c"]
    assert [r.where for r in folder] == [f"{bucket}/seeds/train-00000.jsonl:1", f"{bucket}/seeds/train-00000.jsonl:2",
                                         f"{bucket}/seeds/train-00001.jsonl:1"]
    assert read_records(f"{bucket}/one.jsonl")[0].where == f"{bucket}/one.jsonl:1"

    _put(f"{bucket}/broken.jsonl", '{"question": "ok"}\n{"question": \n')
    with pytest.raises(DataError, match=f"^{bucket}/broken.jsonl:2: "):
        read_records(f"{bucket}/broken.jsonl")
    with pytest.raises(DataError, match=f"{bucket}/one.jsonl:1: required field 'answer' is missing"):
        read_records(f"{bucket}/one.jsonl", fields=["answer"])
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nothing.jsonl: no such file or folder"):
        read_records(f"{bucket}/nothing.jsonl")
    with pytest.raises(FileNotFoundError, match="cannot open this URL"):
        read_records("nosuchscheme://b/x.jsonl")


def test_upload_and_fetch_round_trip_a_tree(bucket, tmp_path):
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "a.jsonl").write_text("1\n")
    (src / "README.md").write_text("card\n")
    upload(src, f"{bucket}/out")
    with fetched(f"{bucket}/out") as local:
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == \
            ["README.md", "data/a.jsonl"]
        assert (local / "data" / "a.jsonl").read_text() == "1\n"
    assert not local.exists()  # the temporary copy is gone after the block


def test_export_copies_dataset_shards_and_card_to_a_url(bucket, tmp_path):
    upstream = tmp_path / "rewards"
    upstream.mkdir()
    rows = [{"id": f"q{i}", "query": f"What is {i}+1?", "response": f"It is \\boxed{{{i + 1}}}.", "reward": 0.5,
             "answer": [str(i + 1)], "majority_answer": str(i + 1), "majority_share": 1.0, "num_responses": 2}
            for i in range(5)]
    (upstream / "records").mkdir()
    (upstream / "records" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = tmp_path / "export"
    stage.mkdir()
    ctx = StageContext(name="export", dir=stage, inputs={"data": upstream}, seed=0, output_dir=tmp_path)
    stats = export(ctx, ExportConfig(copy_to=f"{bucket}/exports/run1"))
    assert stats["copied_to"] == f"{bucket}/exports/run1" and stats["rows"] == 5
    with fetched(f"{bucket}/exports/run1") as local:
        assert datasets.load_from_disk(str(local / "dataset"))["query"] == [r["query"] for r in rows]
        assert (local / "data" / "train-00000.parquet").is_file() and (local / "README.md").is_file()
    again = read_records(f"{bucket}/exports/run1/data/train-00000.jsonl", fields=["query", "response"])
    assert [r.data["id"] for r in again] == [r["id"] for r in rows]
    # The copied `save_to_disk` folder reads back as a dataset too.
    assert [r.data["id"] for r in read_records(f"{bucket}/exports/run1/dataset")] == [r["id"] for r in rows]
