"""The memory plan: bytes per device of a training step (params, gradients, optimizer state, activations under the
remat policy) and of a generation engine (params, KV cache of max_slots x max_cache_length), computed from the
shapes before anything is loaded, so a stage too big for the chip is refused with what to change.

The activation model counts what the backward pass keeps per token for this decoder (models/transformer.py), as
JAX's saved residuals list them: with remat `full` each layer's input, with the `dots` policies the matmul outputs
as well, with `none` every residual of every layer; then the softmax of the float32 logits, plus a working set
(the layer a remat recomputes, the logits' gradient). `benchmarks/memory_plan.py` checks the kept bytes against
`jax.ad_checkpoint`'s saved residuals of the real loss under every policy, and the whole plan against XLA's
`compiled.memory_analysis()` without remat.
"""

from __future__ import annotations

import dataclasses

import jax

from sq_jax.models.config import ModelConfig
from sq_jax.parallel.mesh import resolve_mesh_shape
from sq_jax.train.config import TrainConfig
from sq_jax.train.tasks import task_class

GiB = 1024**3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}

# Memory per chip (HBM) of the devices the plan knows; `-N` is the chip count of the slice / runtime.
CHIP_BYTES = {"v5e": 16 * GiB, "v6e": 32 * GiB, "v4": 32 * GiB, "v5p": 95 * GiB, "h100": 80 * GiB, "a100": 40 * GiB}
# v4 and v5p slices are named by TensorCores (two per chip); v5e / v6e by chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2}


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    chips: int
    bytes_per_chip: int


def parse_device(name: str) -> Device:
    """'v5e-1', 'v6e-1', 'v5e-8', 'v4-8', 'v5p-16' ... -> chips and HBM per chip."""
    kind, _, count = name.lower().partition("-")
    if kind not in CHIP_BYTES or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unknown device {name!r}: expected <kind>-<count> with kind one of {', '.join(CHIP_BYTES)}"
                         " (e.g. v5e-1, v6e-1, v5e-8)")
    chips = max(1, int(count) // _CORES_PER_CHIP.get(kind, 1))
    return Device(name, chips, CHIP_BYTES[kind])


def param_count(cfg: ModelConfig) -> int:
    e, m, n, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = e * (n + 2 * k) * d + n * d * e + 3 * e * m + 2 * e
    per_layer += (n + 2 * k) * d if cfg.qkv_bias else 0
    per_layer += e if cfg.o_bias else 0
    per_layer += (2 * m + e) if cfg.mlp_bias else 0
    head = e * cfg.num_labels if cfg.head == "score" else (0 if cfg.tie_word_embeddings else cfg.vocab_size * e)
    return cfg.vocab_size * e + cfg.num_layers * per_layer + e + head


def lora_param_count(cfg: ModelConfig, rank: int, targets: tuple[str, ...]) -> int:
    """A [in, rank] + B [rank, out] per adapted projection per layer."""
    e, m, n, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    shapes = {"q_proj": (e, n * d), "k_proj": (e, k * d), "v_proj": (e, k * d), "o_proj": (n * d, e),
              "gate_proj": (e, m), "up_proj": (e, m), "down_proj": (m, e)}
    return cfg.num_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def forward_layer_bytes(cfg: ModelConfig, seq_len: int) -> float:
    """Per token, one layer's forward working set (a prefill holds one layer's activations at a time)."""
    c = _BYTES[cfg.dtype]
    e, m, n, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # Two norms (float32 inside), q/k/v before and after rope, attention output, o_proj, residuals,
    # gate/up/silu/product, down; attention probabilities (float32 logits and compute-dtype probabilities).
    dense = c * (4 * e + 2 * (n + k) * d + k * d + n * d + 4 * m) + 4 * 2 * e
    return dense + n * seq_len * (4 + c)


def _norm_residuals(e: int, c: int) -> float:
    """An RMSNorm's residuals per token: its float32 input, the rsqrt, the normalised value (and its cast)."""
    return 4 * e + 8 + (2 if c < 4 else 1) * c * e


def layer_residual_bytes(cfg: ModelConfig, seq_len: int) -> float:
    """What JAX's backward keeps per token of one decoder layer without remat (`jax.ad_checkpoint`'s saved
    residuals of models/transformer.py, counted by hand and checked against them in tests/train/test_memory_plan)."""
    c = _BYTES[cfg.dtype]
    e, m, n, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # jax.nn.dot_product_attention: the broadcast mask, float32 logits and softmax, the probabilities in the
    # compute dtype, the row max and sum; q and the attention output, k after rope and v; rope's float32 cos/sin.
    attention = n * seq_len * (1 + 2 * 4 + c) + 2 * n * 4 + 2 * n * d * c + 2 * k * d * c + 8 * d
    mlp = 6 * m * c  # gate, up, and silu(gate) * up's four intermediates
    # Two norms; in float32 the cast away from float32 is no copy, so the residual stream itself is kept instead.
    norms = 2 * _norm_residuals(e, c) + (2 * c * e if c == 4 else 0)
    return attention + mlp + norms


def backward_residual_bytes(cfg: ModelConfig, seq_len: int, remat: str, lora_rank: int | None = None,
                            lora_targets: tuple[str, ...] = ()) -> float:
    """Per token, what the backward pass keeps under `remat` (saved residuals over every layer, the final norm
    and the softmax of the float32 logits); with LoRA also each adapter's x @ A (and under the `dots` policies
    its delta, a matmul output)."""
    c = _BYTES[cfg.dtype]
    e, m, n, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    head = _norm_residuals(e, c) + (4 * cfg.vocab_size if cfg.head != "score" else 0)
    adapters = 4 * (lora_rank or 0) * len(lora_targets)  # float32, as the adapters are
    if remat == "none":
        return cfg.num_layers * (layer_residual_bytes(cfg, seq_len) + adapters) + head
    # A remat'd layer keeps its input (the last layer's output feeds the final norm) and the mask, once.
    kept = (cfg.num_layers + 1) * c * e + seq_len
    if remat in ("dots", "dots_no_batch"):
        # Matmul outputs are kept: q/k/v, o_proj, gate and up (and, with batch dims, the float32 attention scores
        # and the probabilities times values); down_proj's output only feeds the residual sum.
        widths = {"q_proj": n * d, "k_proj": k * d, "v_proj": k * d, "o_proj": e, "gate_proj": m, "up_proj": m,
                  "down_proj": 0}
        dots = c * sum(widths.values()) + adapters + 4 * sum(widths[t] for t in lora_targets if lora_rank)
        kept += cfg.num_layers * (dots + (n * seq_len * 4 + n * d * c if remat == "dots" else 0))
    elif remat != "full":
        raise ValueError(f"model.remat={remat!r}: expected none, full, dots or dots_no_batch")
    return kept + head


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Bytes per device of one stage; `rows` in print order."""

    stage: str
    kind: str  # train | generate
    rows: dict[str, int]
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclasses.dataclass(frozen=True)
class TrainShape:
    """What the train-step plan needs from a TrainConfig (see `train_shape`)."""

    seq_len: int
    micro_batch: int  # rows per forward/backward, all devices together
    param_dtype: str
    remat: str
    grad_accum: int = 1  # micro-batches per step; above 1 a running gradient sum is kept beside each micro's
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ()
    data_parallel: int = 1  # data x fsdp: how many ways the rows are split
    param_shards: int = 1  # fsdp x tensor: how many ways each weight is split
    tensor: int = 1


def train_shape(cfg: TrainConfig, chips: int) -> TrainShape:
    data, fsdp, tensor = resolve_mesh_shape((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor), chips)
    seq = task_class(cfg.task).row_length(cfg.data)
    lora = cfg.lora
    return TrainShape(seq_len=seq, micro_batch=cfg.micro_batch_size or cfg.global_batch_size,
                      grad_accum=cfg.grad_accum_steps, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
                      lora_rank=lora.rank if lora else None, lora_targets=lora.targets if lora else (),
                      data_parallel=data * fsdp, param_shards=fsdp * tensor, tensor=tensor)


def train_plan(cfg: ModelConfig, shape: TrainShape, stage: str = "train") -> StagePlan:
    total = param_count(cfg)
    pbytes = _BYTES[shape.param_dtype]
    if shape.lora_rank:
        trainable = lora_param_count(cfg, shape.lora_rank, shape.lora_targets)
        trainable += cfg.hidden_size * cfg.num_labels if cfg.head == "score" else 0
        train_bytes, shards = trainable * 4, 1  # adapters are float32 and replicated
    else:
        trainable, train_bytes, shards = total, total * pbytes, shape.param_shards
    tokens = shape.micro_batch * shape.seq_len / shape.data_parallel
    kept = backward_residual_bytes(cfg, shape.seq_len, shape.remat, shape.lora_rank, shape.lora_targets)
    # Working set: a remat'd layer recomputed whole for its backward (without remat nothing is recomputed), and
    # the float32 logits' gradient (their softmax is among the kept residuals).
    layer = layer_residual_bytes(cfg, shape.seq_len) if shape.remat != "none" else 0
    logits = 4 * cfg.vocab_size if cfg.head != "score" else 0
    rows = {
        "params": int(total * pbytes / shape.param_shards + (trainable * 4 if shape.lora_rank else 0)),
        "gradients": int((2 if shape.grad_accum > 1 else 1) * train_bytes / shards),
        "optimizer": int(2 * train_bytes / shards),  # AdamW's two moments, in the trained weights' dtype
        "activations": int(tokens * (kept + layer + logits) / shape.tensor),
    }
    notes = (f"{trainable / 1e6:.1f}M trainable of {total / 1e6:.1f}M params",)
    return StagePlan(stage, "train", rows, notes)


def generation_plan(cfg: ModelConfig, *, slots: int, cache_length: int, prefill_length: int, dtype: str,
                    prefill_rows: int = 1, devices: int = 1, stage: str = "generate") -> StagePlan:
    """An engine (or a scoring pass: no slots, `prefill_rows` sequences at once): weights in the compute dtype,
    the KV cache (keys and values of every layer for every slot), one prefill's activations with its float32
    logits, and the per-step float32 logits of every slot."""
    c = _BYTES[dtype]
    kv = 2 * cfg.num_layers * slots * cache_length * cfg.num_kv_heads * cfg.head_dim * c
    layer = forward_layer_bytes(dataclasses.replace(cfg, dtype=dtype), prefill_length)
    vocab = 4 * cfg.vocab_size if cfg.head != "score" else 0
    rows = {
        "params": int(param_count(cfg) * c / devices),
        "kv_cache": int(kv / devices),
        "activations": int((prefill_rows * prefill_length * (layer + vocab) + slots * vocab) / devices),
    }
    note = f"KV cache {slots} slots x {cache_length} tokens" if slots else f"{prefill_rows} x {prefill_length} tokens"
    return StagePlan(stage, "generate", rows, (note,))


def refuse_if_too_big(cfg: TrainConfig, model: ModelConfig, stage: str = "train") -> None:
    """At the start of training on a chip that reports its memory (TPU, GPU): raise with what to change if the
    step would not fit. CPUs report none and are never refused."""
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        return
    device = Device(f"this {jax.local_devices()[0].device_kind}", jax.device_count(), int(limit))
    problem = too_big(train_plan(model, train_shape(cfg, device.chips), stage), device, headroom=1.0)
    if problem:
        raise ValueError(problem)


def too_big(plan: StagePlan, device: Device, headroom: float = 0.9) -> str | None:
    """Why `plan` does not fit in `headroom` of one chip of `device` and what to change, or None."""
    limit = int(device.bytes_per_chip * headroom)
    if plan.total <= limit:
        return None
    r = plan.rows
    if plan.kind == "train":
        hints = []
        if r["activations"] > 0.25 * plan.total:
            hints.append("a smaller micro_batch_size (more gradient accumulation), model.remat: full, or a shorter "
                         "data.max_length / row_length")
        if r["optimizer"] > 0.1 * plan.total:
            hints.append("lora: {rank: 16} (optimizer state and gradients for the adapters only) and "
                         "model.param_dtype: bfloat16 for the frozen base")
        if not hints:
            hints.append("model.param_dtype: bfloat16 or a bigger device")
    else:
        hints = ["fewer engine.max_slots or a shorter engine.max_cache_length (the KV cache is "
                 f"{r['kv_cache'] / GiB:.1f} GiB)", "a shorter engine.max_prefill_length"]
    return (f"stage {plan.stage!r} needs {plan.total / GiB:.1f} GiB per chip but {device.name} has "
            f"{device.bytes_per_chip / GiB:.0f} GiB ({headroom:.0%} usable: {limit / GiB:.1f} GiB); change: "
            + "; or ".join(hints))


def format_plans(plans: list[StagePlan], device: Device) -> str:
    """A table of every stage's bytes per chip (GiB) and whether it fits."""
    cols = ("params", "gradients", "optimizer", "activations", "kv_cache")
    lines = [f"memory plan per chip on {device.name} ({device.bytes_per_chip / GiB:.0f} GiB)",
             f"{'stage':<16} {'kind':<9}" + "".join(f"{c:>12}" for c in cols) + f"{'total':>10}  fits"]
    for p in plans:
        cells = "".join(f"{p.rows[c] / GiB:>12.2f}" if c in p.rows else f"{'-':>12}" for c in cols)
        fits = "yes" if too_big(p, device) is None else "NO"
        lines.append(f"{p.stage:<16} {p.kind:<9}{cells}{p.total / GiB:>10.2f}  {fits}   {'; '.join(p.notes)}")
    return "\n".join(lines)
