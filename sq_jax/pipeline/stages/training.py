"""The training stage: any task of the one training loop (QFT, QPO, SFT, the difficulty scorer) on the records of
an upstream stage, starting from an upstream model or a path; resumes from its own checkpoints after a kill."""

from __future__ import annotations

import dataclasses
from typing import Any

from sq_jax.configlib import fill
from sq_jax.pipeline.stages.base import RECORDS, Kind, StageContext, refuse_output_dir
from sq_jax.toy.tiny import build_tiny
from sq_jax.train.config import DataSection, ModelSection, SourceSection, TrainConfig
from sq_jax.train.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class StageModelSection(ModelSection):
    path: str | None = None  # default: the `model` input's exported checkpoint


@dataclasses.dataclass(frozen=True)
class StageDataSection(DataSection):
    sources: list[SourceSection] = dataclasses.field(default_factory=list)  # read after the `data` input's records


@dataclasses.dataclass(frozen=True)
class StageTrainConfig(TrainConfig):
    """The trainer's config (as in configs/qft/*.yaml) with what the pipeline fills left open: `model.path` (the
    `model` input's export unless given), the first data source (the `data` input's records, when there is one) and
    `output_dir` (the stage folder). Checked whole when the pipeline file loads."""

    model: StageModelSection = dataclasses.field(default_factory=StageModelSection)
    data: StageDataSection = dataclasses.field(default_factory=StageDataSection)
    output_dir: str = ""

    def __post_init__(self) -> None:
        refuse_output_dir(self.output_dir, "a training stage")
        super().__post_init__()

    def filled(self, model: str | None, data: str | None, output_dir: str) -> TrainConfig:
        """The trainer's config: the model path (when the stage's own is not set), the data input's records and
        the stage folder filled in."""
        sources = ([SourceSection(path=data)] if data is not None else []) + list(self.data.sources)
        model_section = fill(ModelSection, self.model, path=self.model.path or model)
        return fill(TrainConfig, self, output_dir=output_dir, model=model_section,
                    data=fill(DataSection, self.data, sources=sources))


@dataclasses.dataclass(frozen=True)
class TrainStageConfig:
    train: StageTrainConfig


def train(ctx: StageContext, cfg: TrainStageConfig) -> dict[str, Any]:
    model = None if cfg.train.model.path else ctx.model("model")
    data = str(ctx.inputs["data"] / RECORDS) if "data" in ctx.inputs else None
    train_cfg = cfg.train.filled(model, data, str(ctx.dir))
    if not train_cfg.checkpoint.export_hf:
        raise ctx.error("checkpoint.export_hf must stay true: later stages read the trained model from hf/")
    result = Trainer(train_cfg).train()
    return {"task": train_cfg.task, "steps": result.steps, "final_loss": result.final_loss,
            "eval": result.eval_metrics, "data": result.data_stats}


@dataclasses.dataclass(frozen=True)
class TinyModelConfig:
    seed: int = 0


def tiny_model(ctx: StageContext, cfg: TinyModelConfig) -> dict[str, Any]:
    """The embedded tiny qwen2 model and tokenizer (what `sq-jax init-tiny` builds), so the tiny default
    pipeline needs no download."""
    build_tiny(ctx.dir / "hf", seed=cfg.seed)
    return {"model": str(ctx.dir / "hf")}


KINDS = {
    "train": Kind(TrainStageConfig, train, optional_inputs=("model", "data"), produces="model", collective=True),
    "tiny_model": Kind(TinyModelConfig, tiny_model, produces="model"),
}
