"""Every config shipped in configs/ loads into its dataclass (a typo or stale key fails here, not on a pod)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sq_jax.configlib import load_config
from sq_jax.pipeline.config import PipelineConfig, load_pipeline
from sq_jax.sampling.generate_job import GenerateConfig
from sq_jax.sampling.server import ServeConfig
from sq_jax.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = {"qft": TrainConfig, "sft": TrainConfig, "qpo": TrainConfig, "generate": GenerateConfig,
         "pipeline": PipelineConfig, "serve": ServeConfig}


def test_every_config_folder_has_a_loader():
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} <= set(KINDS)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml")))
def test_config_loads(path):
    kind = Path(path).parts[0]
    # Pipelines also check every stage's config against its kind.
    cfg = load_pipeline(CONFIGS / path) if kind == "pipeline" else load_config(KINDS[kind], CONFIGS / path)
    if kind in ("qft", "sft", "qpo"):
        assert cfg.task == kind
