"""Exactly-once under failure: SIGKILL the pipeline inside question synthesis, inside the solvability filter and
inside response generation (a real subprocess and signal); the resumed run ends with byte-identical records and
generation shards to an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sq_jax.pipeline.config import load_pipeline
from sq_jax.pipeline.runner import read_manifest, run_pipeline

ENGINE = {"max_slots": 16, "max_cache_length": 256, "max_prefill_length": 192, "decode_steps": 4,
          "dtype": "float32", "mesh_tensor": 1, "mesh_fsdp": -1, "overlong_prompt": "truncate_left"}
GENERATION = {"engine": ENGINE, "backend": "raw", "shard_size": 16}
GENERATING = ["questions", "judged", "responses"]


def pipeline(output_dir: Path) -> dict:
    return {"output_dir": str(output_dir), "seed": 5, "stages": {
        "tiny": {"kind": "tiny_model"},
        "questions": {"kind": "synthesize", "inputs": {"model": "tiny"},
                      "config": {"count": 96, "sampling": {"temperature": 1.0, "top_p": 0.99, "max_tokens": 32},
                                 "keep_truncated": True, **GENERATION}},  # the raw tiny model rarely ends in 32
        "judged": {"kind": "judge", "inputs": {"questions": "questions", "model": "tiny"},
                   "config": {"sampling": {"temperature": 0.7, "max_tokens": 24}, "on_no_verdict": "keep",
                              **GENERATION}},
        "responses": {"kind": "respond", "inputs": {"questions": "judged", "model": "tiny"},
                      "config": {"samples": 2, "require_answer": False,
                                 "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 24}, **GENERATION}},
    }}


def kill_when(command: list[str], marker: Path, timeout: float = 240) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"finished before {marker}: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def outputs(run: Path) -> dict[str, bytes]:
    files = {}
    for stage in GENERATING:
        files[f"{stage}/records.jsonl"] = (run / stage / "records.jsonl").read_bytes()
        for shard in sorted((run / stage / "generate").glob("shard-*.jsonl")):
            files[str(shard.relative_to(run))] = shard.read_bytes()
    return files


@pytest.mark.slow
def test_sigkill_in_three_stages_then_resume_gives_the_uninterrupted_records(tmp_path):
    straight = tmp_path / "straight"
    config = tmp_path / "straight.yaml"
    config.write_text(yaml.safe_dump(pipeline(straight), sort_keys=False))
    run_pipeline(load_pipeline(config))
    expected = outputs(straight)
    assert len([k for k in expected if "/generate/" in k]) == 6 + 6 + 12  # 96 questions, 192 responses

    killed = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(pipeline(killed), sort_keys=False))
    command = [sys.executable, "-m", "sq_jax.cli", "pipeline", "run", str(config)]
    for stage in GENERATING:
        kill_when(command, killed / stage / "generate" / "shard-00002.jsonl")
        manifest = read_manifest(killed / stage)
        assert manifest["status"] == "running"  # killed inside the stage, not between stages
        assert not (killed / stage / "records.jsonl").exists()
        finished = json.loads((killed / stage / "generate" / "_manifest.json").read_text())["finished_shards"]
        assert 1 <= len(finished) < len(list((straight / stage / "generate").glob("shard-*.jsonl")))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(killed) == expected
    ids = [json.loads(line)["id"] for line in expected["responses/records.jsonl"].decode().splitlines()]
    assert len(ids) == len(set(ids)) == 192  # every question's 2 responses, once each
