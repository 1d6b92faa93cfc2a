"""Tasks: how records become batches, and which loss trains on them. No loops here."""

from __future__ import annotations

from typing import Any

from sq_jax.models.tokenizer import PromptFormat
from sq_jax.train.config import TrainConfig


def make_task(cfg: TrainConfig, tokenizer: Any, fmt: PromptFormat) -> Any:
    from sq_jax.train.tasks.lm import QFTTask, SFTTask
    from sq_jax.train.tasks.qpo import QPOTask
    from sq_jax.train.tasks.scorer import ScorerTask

    tasks = {"qft": QFTTask, "sft": SFTTask, "qpo": QPOTask, "scorer": ScorerTask}
    if cfg.task not in tasks:
        raise ValueError(f"unknown task {cfg.task!r}; choose from {', '.join(tasks)}")
    return tasks[cfg.task](tokenizer, fmt, cfg)
