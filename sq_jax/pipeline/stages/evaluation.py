"""The evaluation stage: the tuned student (or any model) on the benchmarks, through `sq_jax.eval`."""

from __future__ import annotations

import dataclasses
from typing import Any

from sq_jax.configlib import fill
from sq_jax.eval.benchmarks import benchmark_path
from sq_jax.eval.runner import EvalConfig, run_eval
from sq_jax.pipeline.stages.base import Kind, StageContext, refuse_output_dir


@dataclasses.dataclass(frozen=True)
class EvalStageConfig(EvalConfig):
    """The eval job's config (`sq-jax eval`) with what the stage fills left open: `model` (the `model` input's
    export unless given) and `output_dir` (the stage folder)."""

    model: str | None = None
    output_dir: str = ""

    def __post_init__(self) -> None:
        refuse_output_dir(self.output_dir, "the eval stage")
        super().__post_init__()


def evaluate(ctx: StageContext, cfg: EvalStageConfig) -> dict[str, Any]:
    for name in cfg.benchmarks:  # before any model loads: a missing local file names this stage's key
        benchmark_path(name, data_dir=cfg.data_dir, paths=cfg.paths, prefix=f"stages.{ctx.name}.config.")
    job = fill(EvalConfig, cfg, model=ctx.model("model", cfg.model), output_dir=str(ctx.dir))
    report = run_eval(job, collective=ctx.collective)
    return {name: round(m["accuracy"], 2) for name, m in report["metrics"].items()}


KINDS = {"eval": Kind(EvalStageConfig, evaluate, optional_inputs=("model",), produces="report")}
