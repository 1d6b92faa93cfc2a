"""The training stage: any task of the one training loop (QFT, QPO, SFT, the difficulty scorer) on the records of
an upstream stage, starting from an upstream model or a path; resumes from its own checkpoints after a kill."""

from __future__ import annotations

import dataclasses
from typing import Any

from sq_jax.configlib import ConfigError, from_dict
from sq_jax.pipeline.stages import Kind, StageContext, RECORDS
from sq_jax.train.config import TrainConfig

_FILLED = "<filled by the pipeline>"


@dataclasses.dataclass(frozen=True)
class TrainStageConfig:
    """A training config (as in configs/qft/*.yaml); `model.path` may come from the `model` input, the data from
    the `data` input (extra `data.sources` are added after it), `output_dir` is the stage folder."""

    train: dict[str, Any]

    def __post_init__(self) -> None:
        # Check the whole training config now, with placeholders for what the pipeline fills in.
        try:
            from_dict(TrainConfig, _filled(self.train, _FILLED, _FILLED, _FILLED), where="train")
        except ConfigError as e:
            raise ConfigError(f"train: {e}") from None


def _filled(train: dict[str, Any], model: str | None, data: str | None, output_dir: str) -> dict[str, Any]:
    out = {**train, "output_dir": output_dir, "model": dict(train.get("model", {})),
           "data": dict(train.get("data", {}))}
    if model is not None and "path" not in out["model"]:
        out["model"]["path"] = model
    sources = list(out["data"].get("sources", []))
    if data is not None:
        sources = [{"path": data}] + sources
    out["data"]["sources"] = sources
    out.setdefault("checkpoint", {})
    return out


def train(ctx: StageContext, cfg: TrainStageConfig) -> dict[str, Any]:
    from sq_jax.train.trainer import Trainer

    model = None if "path" in cfg.train.get("model", {}) else ctx.model("model")
    data = str(ctx.inputs["data"] / RECORDS) if "data" in ctx.inputs else None
    train_cfg = from_dict(TrainConfig, _filled(cfg.train, model, data, str(ctx.dir)), where=f"stage {ctx.name}")
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
    from sq_jax.models.tiny import build_tiny

    build_tiny(ctx.dir / "hf", seed=cfg.seed)
    return {"model": str(ctx.dir / "hf")}


KINDS = {
    "train": Kind(TrainStageConfig, train, optional_inputs=("model", "data"), produces="model", collective=True),
    "tiny_model": Kind(TinyModelConfig, tiny_model, produces="model"),
}
