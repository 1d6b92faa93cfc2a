"""Fingerprints cover content: a cached content hash of files and folders, and stages that never keep (or resume
on) outputs of records that changed under them."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sq_jax.data import fingerprint
from sq_jax.data.dataset import iter_rows
from sq_jax.pipeline.config import load_pipeline
from sq_jax.pipeline.runner import fingerprints, read_manifest, run_pipeline, stage_status
from sq_jax.pipeline.stages import KINDS, Kind, StageContext

HOUR_AGO_NS = 3600 * 10**9


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def hash_calls(monkeypatch) -> list[str]:
    """Every file the fingerprint code reads in full."""
    calls: list[str] = []
    real = fingerprint.sha256_file

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(fingerprint, "sha256_file", counting)
    return calls


def settle(*paths: Path) -> None:
    """Date files an hour back, as files written well before they are hashed (not racily new)."""
    for path in paths:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_AGO_NS))


def test_an_unchanged_large_file_is_hashed_once_a_changed_one_again(tmp_path, hash_calls, cache_dir):
    big = tmp_path / "model.safetensors"
    with big.open("wb") as f:
        f.truncate(100 << 20)  # 100 MB (sparse: cheap to write, read in full when hashed)
    settle(big)
    first = fingerprint.content_hash(big)
    assert first == fingerprint.sha256_file(big) and len(hash_calls) == 2
    hash_calls.clear()
    assert fingerprint.content_hash(big) == first and hash_calls == []  # the cache answers: no byte read
    cached = json.loads((cache_dir / "fingerprints.json").read_text())["files"]
    assert cached[os.path.realpath(big)]["sha256"] == first

    # Same size, same mtime put back by hand: the inode's ctime still tells, and the file is read again.
    st = big.stat()
    with big.open("r+b") as f:
        f.write(b"\1")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert big.stat().st_size == st.st_size and fingerprint.content_hash(big) != first
    assert hash_calls == [os.path.realpath(big)]


def test_racily_new_files_are_not_cached_and_a_broken_cache_is_rebuilt(tmp_path, hash_calls, cache_dir, caplog):
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text('{"id": 1}\n')
    fingerprint.content_hash(fresh)
    fingerprint.content_hash(fresh)  # written just now: a same-tick rewrite would look identical, so not cached
    assert len(hash_calls) == 2 and not (cache_dir / "fingerprints.json").exists()

    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "fingerprints.json").write_text("{not json")
    settle(fresh)
    with caplog.at_level(logging.WARNING):
        sha = fingerprint.content_hash(fresh)
    assert "unreadable fingerprint cache" in caplog.text
    hash_calls.clear()
    assert fingerprint.content_hash(fresh) == sha and hash_calls == []


def test_a_folder_hash_covers_names_and_contents_not_hidden_files(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 64)
    base = fingerprint.content_hash(model)
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("x")
    (model / ".part-00001.jsonl.123.tmp").write_text("half a part")
    assert fingerprint.content_hash(model) == base
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 63 + b"\1")
    changed = fingerprint.content_hash(model)
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 64)
    (model / "sub" / "weights.bin").rename(model / "weights.bin")
    assert len({base, changed, fingerprint.content_hash(model)}) == 3
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        fingerprint.content_hash(tmp_path / "nowhere")


def test_concurrent_processes_keep_the_cache_whole(tmp_path, cache_dir):
    files = []
    for i in range(40):
        files.append(tmp_path / f"f{i}.txt")
        files[-1].write_text(f"file {i}\n" * 100)
    settle(*files)
    script = ("import sys; from sq_jax.data.fingerprint import content_hash\n"
              "for p in sys.argv[1:]: content_hash(p)\n")
    env = {**os.environ, fingerprint.CACHE_ENV: str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, files[k::4])], env=env) for k in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    cached = json.loads((cache_dir / "fingerprints.json").read_text())["files"]
    # Each merge re-reads the file under the lock: no process's entries are lost, none is half-written.
    assert {os.path.realpath(f) for f in files} <= set(cached)
    assert all(cached[os.path.realpath(f)]["sha256"] == fingerprint.sha256_file(f) for f in files)


def test_a_stage_config_naming_a_model_folder_changes_with_its_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * (65 << 20))  # over the old 64 MiB limit, where only size and mtime were hashed
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"id": "a", "question": "What is one plus one?"}\n')
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": {
        "seeds": {"kind": "seed", "config": {"sources": [{"path": str(seeds)}], "answer_field": None}},
        "answers": {"kind": "respond", "inputs": {"questions": "seeds"}, "config": {"model": str(model)}},
    }}, sort_keys=False))
    before = fingerprints(load_pipeline(config))
    st = weights.stat()
    with weights.open("r+b") as f:  # new weights, same size, same mtime: the config did not change
        f.seek(1 << 20)
        f.write(b"\1")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = fingerprints(load_pipeline(config))
    assert after["seeds"] == before["seeds"] and after["answers"] != before["answers"]


# A pipeline of cheap stages, with one that resumes from its own work folder the way generation resumes from
# finished shards: it copies its input in chunks of CHUNK records, skipping chunks an earlier run finished.
CHUNK = 4
CRASH: dict[str, int | None] = {"after_chunks": None}


@dataclasses.dataclass(frozen=True)
class CopyConfig:
    pass


def resumable_copy(ctx: StageContext, cfg: CopyConfig) -> dict[str, Any]:
    rows, work, resumed = list(ctx.iter_records("questions")), ctx.dir / "work", 0
    work.mkdir(exist_ok=True)
    for k in range(0, len(rows), CHUNK):
        chunk = work / f"chunk-{k // CHUNK:03d}.json"
        if chunk.exists():
            resumed += 1
            continue
        if CRASH["after_chunks"] is not None and k // CHUNK >= CRASH["after_chunks"]:
            raise RuntimeError("killed")
        chunk.write_text(json.dumps(rows[k : k + CHUNK]))
    copied = [r for path in sorted(work.glob("chunk-*.json")) for r in json.loads(path.read_text())]
    return {"resumed_chunks": resumed, "copied": ctx.write_records(copied)}


@pytest.fixture
def pipeline(tmp_path, monkeypatch) -> Path:
    monkeypatch.setitem(KINDS, "resumable_copy", Kind(CopyConfig, resumable_copy, required_inputs=("questions",)))
    monkeypatch.setitem(CRASH, "after_chunks", None)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "question": f"A farmer has {i + 3} cows and buys {i + 5} "
                                                                    "more at the market. How many cows now?"}) + "\n"
                             for i in range(12)))
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": {
        "seeds": {"kind": "seed", "config": {"sources": [{"path": str(seeds)}], "answer_field": None}},
        "language": {"kind": "filter_language", "inputs": {"questions": "seeds"}},
        "copy": {"kind": "resumable_copy", "inputs": {"questions": "language"}},
        "dedup": {"kind": "dedup", "inputs": {"questions": "copy"}},
    }}, sort_keys=False))
    return config


def edit_first_question(part: Path, text: str) -> None:
    lines = part.read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "question": text})
    part.write_text("\n".join(lines) + "\n")


EDITED = "A farmer has many cows and sells seven of them at the market. How many cows remain on the farm?"


def test_an_upstream_edited_between_a_kill_and_the_rerun_is_recomputed_not_resumed(pipeline, tmp_path, caplog):
    run = tmp_path / "run"
    CRASH["after_chunks"] = 1
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(load_pipeline(pipeline))
    assert read_manifest(run / "copy")["status"] == "running" and len(list((run / "copy/work").iterdir())) == 1
    edit_first_question(run / "language/records/part-00000.jsonl", EDITED)

    CRASH["after_chunks"] = None
    with caplog.at_level(logging.WARNING):
        report = run_pipeline(load_pipeline(pipeline))
    assert "stage language: its records on disk are not the ones it wrote (part-00000.jsonl changed" in caplog.text
    assert "stage copy: the output of input stage language (content" in caplog.text
    assert "changed since this stage read it; rerunning from scratch" in caplog.text
    stats = {s["stage"]: s["stats"] for s in report["stages"]}
    assert stats["copy"]["resumed_chunks"] == 0  # the chunk made from the old records was not reused
    copied = list(iter_rows(run / "copy/records"))
    assert [r["question"] for r in copied] == [r["question"] for r in iter_rows(run / "language/records")]
    assert copied[0]["question"] == EDITED
    edited = read_manifest(run / "language")
    assert edited["edited"] and edited["content"] == read_manifest(run / "copy")["upstream"]["language"]


def test_a_hand_edited_upstream_part_reruns_the_stages_downstream(pipeline, tmp_path, caplog):
    run = tmp_path / "run"
    run_pipeline(load_pipeline(pipeline))
    stamps = {n: (run / n / "_stage.json").stat().st_mtime_ns for n in ("seeds", "language", "copy", "dedup")}
    run_pipeline(load_pipeline(pipeline))  # nothing changed: nothing reruns, no manifest rewritten
    assert {n: (run / n / "_stage.json").stat().st_mtime_ns for n in stamps} == stamps

    edit_first_question(run / "copy/records/part-00000.jsonl", EDITED)
    assert [r["state"] for r in stage_status(load_pipeline(pipeline))] == ["done", "done", "done", "stale"]
    with caplog.at_level(logging.WARNING):
        run_pipeline(load_pipeline(pipeline))
    assert "stage dedup: the output of input stage copy" in caplog.text
    assert [r["question"] for r in iter_rows(run / "dedup/records")][0] == EDITED
    after = {n: (run / n / "_stage.json").stat().st_mtime_ns for n in stamps}
    assert after["seeds"] == stamps["seeds"] and after["language"] == stamps["language"]
    assert "part-00000.jsonl changed" in read_manifest(run / "copy")["edited"][0]  # copy kept, the edit adopted
    assert [r["state"] for r in stage_status(load_pipeline(pipeline))] == ["done"] * 4
