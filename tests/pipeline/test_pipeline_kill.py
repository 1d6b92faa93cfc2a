"""Exactly-once under failure: SIGKILL the pipeline inside question synthesis (generation), the difficulty filter
and reward scoring (collective scoring), a real subprocess and signal; the resumed run ends with byte-identical
records (generation stages write theirs shard by shard) and score parts to an uninterrupted run with the same seed,
through every stage."""

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
SCORING = ["difficulty", "rewards"]
STAGES = ["questions", "judged", "difficulty", "responses", "rewards"]  # run order
KILLED = ["questions", "difficulty", "rewards"]  # one per resumable mechanism: a subprocess start costs ~20 s
SCORER = {"head": "score", "dtype": "float32", "batch_size": 8, "max_length": 512}  # a part: a few forward calls


def pipeline(output_dir: Path) -> dict:
    return {"output_dir": str(output_dir), "seed": 5, "stages": {
        "tiny": {"kind": "tiny_model"},
        "questions": {"kind": "synthesize", "inputs": {"model": "tiny"},
                      "config": {"count": 64, "sampling": {"temperature": 1.0, "top_p": 0.99, "max_tokens": 32},
                                 "keep_truncated": True, **GENERATION}},  # the raw tiny model rarely ends in 32
        "judged": {"kind": "judge", "inputs": {"questions": "questions", "model": "tiny"},
                   "config": {"sampling": {"temperature": 0.7, "max_tokens": 24}, "on_no_verdict": "keep",
                              **GENERATION}},
        "difficulty": {"kind": "filter_difficulty", "inputs": {"questions": "judged", "scorer": "tiny"},
                       "config": {"drop_easiest": 0.25, **SCORER}},
        "responses": {"kind": "respond", "inputs": {"questions": "difficulty", "model": "tiny"},
                      "config": {"samples_per_prompt": 2, "require_answer": False,
                                 "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 24}, **GENERATION}},
        "rewards": {"kind": "reward", "inputs": {"responses": "responses", "model": "tiny"}, "config": SCORER},
    }}


def kill_when(command: list[str], marker: Path, timeout: float = 240) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"finished before {marker}: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def outputs(run: Path) -> dict[str, bytes]:
    """Every record part, dropped part and score part of the run, by path."""
    files = {}
    for stage in STAGES:
        for pattern in ("records/part-*.jsonl", "dropped/part-*.jsonl", "scores/*.npz"):
            for path in sorted((run / stage).glob(pattern)):
                files[str(path.relative_to(run))] = path.read_bytes()
    return files


def work_units(run: Path, stage: str) -> list[Path]:
    """What a stage has finished so far: score parts, or record parts (one per generation shard)."""
    return sorted((run / stage).glob("scores/*.npz" if stage in SCORING else "records/part-*.jsonl"))


@pytest.mark.slow
def test_sigkill_in_generation_difficulty_and_reward_then_resume_gives_the_uninterrupted_records(tmp_path):
    straight = tmp_path / "straight"
    config = tmp_path / "straight.yaml"
    config.write_text(yaml.safe_dump(pipeline(straight), sort_keys=False))
    run_pipeline(load_pipeline(config))
    expected = outputs(straight)
    shards = [json.loads((straight / s / "generate" / "_manifest.json").read_text())["num_shards"] for s in GENERATING]
    assert shards == [4, 4, 6]  # 64 questions, 48 kept x 2 responses
    assert not list(straight.glob("*/generate/shard-*.jsonl"))  # outputs go straight into record parts
    assert len([k for k in expected if "/scores/" in k]) == 4 + 6  # a score part per input part

    killed = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(pipeline(killed), sort_keys=False))
    command = [sys.executable, "-m", "sq_jax.cli", "pipeline", "run", str(config)]
    for stage in KILLED:
        marker = "scores/part-00001.npz" if stage in SCORING else "records/part-00002.jsonl"
        kill_when(command, killed / stage / marker)
        manifest = read_manifest(killed / stage)
        assert manifest["status"] == "running"  # killed inside the stage, not between stages
        if stage in SCORING:  # records come once every part is scored
            assert not list((killed / stage).glob("records/part-*.jsonl"))
        assert 1 <= len(work_units(killed, stage)) < len(work_units(straight, stage)), stage
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(killed) == expected
    ids = [json.loads(line)["id"] for k, v in expected.items() if k.startswith("responses/records/")
           for line in v.decode().splitlines()]
    assert len(ids) == len(set(ids)) == 96  # every kept question's 2 responses, once each
    best = [json.loads(line) for k, v in expected.items() if k.startswith("rewards/records/")
            for line in v.decode().splitlines()]
    assert len(best) == 48 and all(b["num_responses"] == 2 for b in best)
