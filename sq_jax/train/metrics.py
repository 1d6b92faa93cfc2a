"""Throughput accounting (FLOPs per token, device peaks, MFU) and the metrics sinks (JSONL, TensorBoard)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from sq_jax.models.config import ModelConfig

# Dense bf16 peak TFLOP/s per chip, matched against `device.device_kind` by prefix (longest first).
DEVICE_PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
}


def device_peak_tflops(device: jax.Device | None = None, override: float | None = None) -> float | None:
    if override is not None:
        return override
    kind = (device or jax.devices()[0]).device_kind
    for prefix in sorted(DEVICE_PEAK_TFLOPS, key=len, reverse=True):
        if kind.startswith(prefix):
            return DEVICE_PEAK_TFLOPS[prefix]
    return None


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: 6 x matmul params + causal attention (PaLM appendix B).

    The embedding lookup is not a matmul and is left out; the LM head (tied or not) is in.
    """
    matmul_params = cfg.num_params(include_embeddings=False)
    matmul_params += cfg.hidden_size * (cfg.num_labels if cfg.head == "score" else cfg.vocab_size)
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * matmul_params + attention


class MetricsWriter:
    """Process 0 writes `metrics.jsonl` (one object per record, easy to test and plot) and TensorBoard scalars."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter  # optional: only runs that write TensorBoard scalars

                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
