"""The training config: one dataclass tree for QFT, SFT (and later QPO), loaded from YAML by `configlib`."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelSection:
    path: str  # HF dir / hub id, or an sq-jax native checkpoint dir (has params/)
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # master weights
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    prompt_format: str | None = None  # qwen / deepseek / llama3 / mistral; None: detected from the tokenizer


@dataclasses.dataclass(frozen=True)
class SourceSection:
    path: str  # jsonl / parquet / dir of shards / saved HF dataset / hf:org/name[:config] / procedural:N[:seed]
    field_map: dict[str, str] = dataclasses.field(default_factory=dict)  # wanted field -> source field
    split: str = "train"
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class DataSection:
    sources: list[SourceSection]
    max_length: int = 256  # packed row length; also the per-example cap
    overlong: Literal["truncate", "drop"] = "truncate"
    seed: int = 0
    open_bins: int = 16
    eval_sources: list[SourceSection] = dataclasses.field(default_factory=list)  # else `eval_count` held out
    eval_count: int = 0


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float = 2e-5
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = None  # wins over warmup_ratio when set
    warmup_ratio: float = 0.03
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    distributed: bool = False  # call jax.distributed.initialize() (multi-host TPU / GPU)
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    dir: str | None = None  # default: <output_dir>/checkpoints
    every_steps: int = 500
    keep: int = 3
    async_save: bool = True
    export_hf: bool = True  # write <output_dir>/hf at the end


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: Literal["qft", "sft"]
    model: ModelSection
    data: DataSection
    output_dir: str
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    global_batch_size: int = 32  # packed rows per optimizer step, all hosts together
    micro_batch_size: int | None = None  # rows per forward/backward; None = global (no accumulation)
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None  # None: only at the end
    log_example_ids: bool = False  # write each step's example indices (data-order audits)
    peak_tflops_per_device: float | None = None  # for MFU where the device table does not know the chip
    tensorboard: bool = True

    def __post_init__(self) -> None:
        micro = self.micro_batch_size or self.global_batch_size
        if self.global_batch_size % micro:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size={micro}"
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size or self.global_batch_size)
