"""Shared training fixtures: a micro model (every axis divisible by 8) and config builders."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sq_jax.configlib import from_dict
from sq_jax.models.tiny import build_tiny
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
