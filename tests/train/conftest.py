"""Shared training fixtures: a micro model (every axis divisible by 8) and config builders."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sq_jax.configlib import from_dict
from sq_jax.toy.tiny import build_tiny
from sq_jax.train.config import TrainConfig

MICRO_SHAPE = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8, num_kv_heads=8, head_dim=8)


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("micro") / "model", num_texts=1000, vocab_size=512, **MICRO_SHAPE)


def base_config(model_dir: Path, output_dir: Path, **overrides) -> dict:
    cfg = {
        "task": "qft",
        "model": {"path": str(model_dir), "dtype": "float32", "param_dtype": "float32"},
        "data": {"sources": [{"path": "procedural:400:5"}], "max_length": 64, "seed": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "cosine", "weight_decay": 0.01},
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "output_dir": str(output_dir),
        "global_batch_size": 8,
        "max_steps": 20,
        "log_every": 1,
        "tensorboard": False,
        "checkpoint": {"every_steps": 1000, "keep": 1, "export_hf": False},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = copy.deepcopy(value)
    return cfg


def make_config(model_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    return from_dict(TrainConfig, base_config(model_dir, output_dir, **overrides))


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_losses(output_dir: Path) -> dict[int, float]:
    """step -> loss of the train rows in metrics.jsonl; a resumed run overwrites the steps it recomputed."""
    out = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out


def kill_then_resume(command: list[str], output_dir: Path, after_lines: int) -> subprocess.CompletedProcess:
    """Run `command`, SIGKILL it once metrics.jsonl has `after_lines` lines, rerun it to the end; the rerun's
    result. Asserts the kill landed mid-run (at least `after_lines` steps logged, not all of them)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    metrics = output_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= after_lines:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    assert max(train_losses(output_dir)) >= after_lines
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resumed
