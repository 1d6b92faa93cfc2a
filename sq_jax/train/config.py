"""The training config: one dataclass tree for QFT, SFT and QPO, loaded from YAML by `configlib`."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelSection:
    path: str  # HF dir / hub id, or an sq-jax native checkpoint dir (has params/)
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # master weights
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    prompt_format: str | None = None  # a PROMPT_FORMATS name (prompts/formats.py); None: detected from the tokenizer
    head: Literal["lm", "score"] | None = None  # score: a scalar head (fresh if the checkpoint is a causal LM)


@dataclasses.dataclass(frozen=True)
class SourceSection:
    path: str  # jsonl / parquet / dir of shards / saved HF dataset / hf:org/name[:config] / procedural:N[:seed]
    field_map: dict[str, str] = dataclasses.field(default_factory=dict)  # wanted field -> source field
    split: str = "train"
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class DataSection:
    sources: list[SourceSection]
    max_length: int = 256  # per-sequence cap (prompt + completion for preference pairs)
    row_length: int | None = None  # packed row length; default max_length (2 x max_length for pairs)
    overlong: Literal["truncate", "drop"] = "truncate"
    seed: int = 0
    open_bins: int = 16
    eval_sources: list[SourceSection] = dataclasses.field(default_factory=list)  # else `eval_count` held out
    eval_count: int = 0
    # Data shares, packed independently and dealt to processes (default: one per process). A fixed number makes
    # every batch independent of how many hosts run it (e.g. resume a 4-host run on 2, or check one against it).
    shares: int | None = None

    def __post_init__(self) -> None:
        if self.shares is not None and self.shares < 1:
            raise ValueError(f"data.shares must be >= 1, got {self.shares}")


@dataclasses.dataclass(frozen=True)
class PreferenceSection:
    """QPO / DPO settings (used by task: qpo)."""

    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = 0.0  # conservative DPO (sigmoid only)
    reference_free: bool = False
    # precomputed: one sharded pass over the pairs before training, stored beside the run (no second model in
    # memory while training); online: a frozen reference model on the mesh scores every batch.
    reference: Literal["precomputed", "online"] = "precomputed"
    reference_path: str | None = None  # default: model.path (the policy's starting point, as in the paper)
    max_pairs_per_row: int = 8  # pair slots per packed row; 1 gives exactly global_batch_size pairs per step

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"preference.beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"preference.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"preference.label_smoothing applies to the sigmoid loss only, not {self.loss_type!r}")
        if self.max_pairs_per_row < 1:
            raise ValueError(f"preference.max_pairs_per_row must be >= 1, got {self.max_pairs_per_row}")


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float = 2e-5
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = None  # wins over warmup_ratio when set
    warmup_ratio: float = 0.03
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999  # Hugging Face's (and the authors' runs') AdamW default
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


# The projection kernels LoRA can adapt (models/transformer.py names).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraSection:
    """LoRA adapters (train/lora.py): only they are trained (and a fresh score head); the base stays frozen, in
    model.param_dtype (bfloat16 halves it). Adapters are float32."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = PROJECTIONS
    dropout: float = 0.0
    export_adapter: bool = True  # also write <output_dir>/adapter in PEFT's format beside the merged hf/

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown or not self.targets:
            raise ValueError(f"lora.targets {list(self.targets)}: choose from {', '.join(PROJECTIONS)}")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    dir: str | None = None  # default: <output_dir>/checkpoints
    every_steps: int = 500
    keep: int = 3
    async_save: bool = True
    export_hf: bool = True  # write <output_dir>/hf at the end


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: Literal["qft", "sft", "qpo", "scorer"]
    model: ModelSection
    data: DataSection
    output_dir: str
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    preference: PreferenceSection = dataclasses.field(default_factory=PreferenceSection)
    lora: LoraSection | None = None  # set: train LoRA adapters instead of every weight
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
        if self.data.row_length is not None and self.data.row_length < self.data.max_length:
            raise ValueError(f"data.row_length={self.data.row_length} is shorter than data.max_length="
                             f"{self.data.max_length}")
        if "://" in self.output_dir:
            raise ValueError(f"output_dir={self.output_dir!r}: metrics and the HF export need a local or mounted "
                             "folder (e.g. a gcsfuse mount); checkpoint.dir may be a gs:// URL")
        if self.data.shares is not None and self.global_batch_size % self.data.shares:
            raise ValueError(f"global_batch_size={self.global_batch_size} does not split over data.shares="
                             f"{self.data.shares}")
        if self.lora is not None and self.model.dtype != self.model.param_dtype:
            # qwix finds the weight an einsum adapts by the array itself; the cast to the compute dtype hides it.
            raise ValueError(
                f"lora with model.dtype={self.model.dtype} and model.param_dtype={self.model.param_dtype}: the "
                "frozen base must be held in the compute dtype (LoRA keeps no master weights of it; adapters stay "
                f"float32). Set model.param_dtype: {self.model.dtype}, or model.dtype: {self.model.param_dtype}")

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size or self.global_batch_size)
