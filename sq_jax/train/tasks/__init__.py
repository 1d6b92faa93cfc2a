"""Tasks: how records become batches, and which loss trains on them. No loops here.

The training loop knows a task only through `Task`: the loop owns checkpoints, resume and metrics, and asks the
task what it adds to each (the config sections that change its updates, what a step's statistics log as, how long
a packed row is), so no task is named in the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from sq_jax.data.sources import Record
from sq_jax.prompts.formats import PromptFormat
from sq_jax.train.config import DataSection, TrainConfig
from sq_jax.train.step import LossFn
from sq_jax.train.tasks.lm import QFTTask, SFTTask
from sq_jax.train.tasks.qpo import QPOTask
from sq_jax.train.tasks.scorer import ScorerTask


class Task(Protocol):
    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # record fields every source must have
    needs_reference: bool  # the loss reads `reference_logps` (the loop sets up a reference scorer)
    loss_fn: LossFn

    @classmethod
    def row_length(cls, data: DataSection) -> int:
        """Tokens in a packed row (also what the memory plan sizes activations by)."""
        ...

    @classmethod
    def resume_sections(cls, cfg: TrainConfig) -> dict[str, Any]:
        """The task's own config sections that change the sequence of updates, beside the loop's (model, data,
        optimizer, batch): a checkpoint written under other values is not resumed."""
        ...

    def build_examples(self, records: Sequence[Record]) -> Any:
        """Records -> the tokenized examples the packer and `loss_fn` read."""
        ...

    def step_counts(self, count: float) -> dict[str, float]:
        """What a train step's summed `count` statistic logs as (nothing, or a named count such as pairs)."""
        ...

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Held-out statistics (means over the eval set) -> the eval metrics reported."""
        ...


TASKS: dict[str, type[Task]] = {"qft": QFTTask, "sft": SFTTask, "qpo": QPOTask, "scorer": ScorerTask}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def make_task(cfg: TrainConfig, tokenizer: Any, fmt: PromptFormat) -> Task:
    return task_class(cfg.task)(tokenizer, fmt, cfg)
