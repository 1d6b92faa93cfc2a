"""`ModelConfig`: one dataclass for every decoder family, read from and written to a Hugging Face `config.json`.

Families differ only in a few switches (biases, tied embeddings, rope scaling, sliding window, weight layout), so
one config and one decoder cover them all; `family` picks the weight-name map in `hf_io`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sq_jax.configlib import ConfigError

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "internlm2")
# `dynamic` (InternLM2's and Llama 2's dynamic NTK) changes the base only past `max_position_embeddings`: within it
# it is default RoPE, which is all sq-jax computes (see `exact_length`).
SUPPORTED_ROPE_SCALING = ("default", "linear", "llama3", "dynamic")
HEAD_KINDS = ("lm", "score")

# HF architecture names per (family, head): what `config.json` says and `transformers` instantiates.
_ARCHITECTURES = {
    ("llama", "lm"): "LlamaForCausalLM",
    ("llama", "score"): "LlamaForSequenceClassification",
    ("mistral", "lm"): "MistralForCausalLM",
    ("mistral", "score"): "MistralForSequenceClassification",
    ("qwen2", "lm"): "Qwen2ForCausalLM",
    ("qwen2", "score"): "Qwen2ForSequenceClassification",
    ("internlm2", "lm"): "InternLM2ForCausalLM",
    ("internlm2", "score"): "InternLM2ForRewardModel",
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `llama3` follows Llama 3.1; `linear` divides positions by `factor`."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    head: str = "lm"
    num_labels: int = 1
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # A reward model's pooling token (internlm2-7b-reward: 92527): appended to every scored sequence and read there.
    reward_token_id: int | None = None
    # Runtime settings, not part of the checkpoint: parameter storage dtype, matmul/activation dtype, and
    # which activations a rematerialised layer keeps ("none" keeps everything; see transformer.REMAT_POLICIES).
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self) -> None:
        if self.family not in SUPPORTED_FAMILIES:
            raise ConfigError(
                f"unknown model family {self.family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}"
            )
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"unknown head {self.head!r}; supported: {', '.join(HEAD_KINDS)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        if self.rope_scaling is not None and self.rope_scaling.rope_type not in SUPPORTED_ROPE_SCALING:
            raise ConfigError(
                f"unsupported rope scaling type {self.rope_scaling.rope_type!r}; "
                f"supported: {', '.join(SUPPORTED_ROPE_SCALING)}"
            )

    @property
    def exact_length(self) -> int | None:
        """The longest sequence this port computes exactly as the checkpoint's own code; None: no limit."""
        if self.rope_scaling is not None and self.rope_scaling.rope_type == "dynamic":
            return self.max_position_embeddings
        return None

    def check_length(self, length: int, key: str) -> None:
        """Refuse `length` (the config `key` that sets it) past `exact_length`."""
        limit = self.exact_length
        if limit is not None and length > limit:
            raise ConfigError(
                f"{key}={length} exceeds max_position_embeddings={limit} of a model with dynamic RoPE scaling, "
                f"which sq-jax computes exactly only up to that length; set {key} <= {limit}"
            )

    @property
    def num_kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of the decoder built from this config."""
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
        if self.o_bias:
            attn += self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        if self.mlp_bias:
            mlp += 2 * self.intermediate_size + self.hidden_size
        per_layer = attn + mlp + 2 * self.hidden_size
        total = self.num_layers * per_layer + self.hidden_size
        if include_embeddings:
            total += self.vocab_size * self.hidden_size
            if self.head == "score":
                total += self.num_labels * self.hidden_size
            elif not self.tie_word_embeddings:
                total += self.vocab_size * self.hidden_size
        return total


def _rope_from_hf(hf: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    # transformers >= 5 writes `rope_parameters` (theta inside); checkpoints on the hub use `rope_theta` +
    # `rope_scaling` (with `type` or `rope_type`). Accept both.
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    if not scaling:
        return theta, None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_SCALING:
        raise ConfigError(
            f"{where}: unsupported rope scaling type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_SCALING)}"
        )
    if rope_type == "default":
        return theta, None
    fields = {f.name for f in dataclasses.fields(RopeScaling)}
    kwargs = {k: v for k, v in scaling.items() if k in fields and k != "rope_type"}
    return theta, RopeScaling(rope_type=rope_type, **kwargs)


def _require(hf: dict[str, Any], key: str, where: str) -> Any:
    if key not in hf:
        raise ConfigError(f"{where}: missing key {key!r}")
    return hf[key]


def from_hf_config(hf: dict[str, Any], *, where: str = "config.json", **runtime: Any) -> ModelConfig:
    """Build a `ModelConfig` from a parsed HF `config.json`; `runtime` sets dtype / param_dtype / remat."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise ConfigError(
            f"{where}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise ConfigError(f"{where}: qwen2 with use_sliding_window=true (per-layer sliding window) is not supported")
    theta, scaling = _rope_from_hf(hf, where)
    hidden = int(_require(hf, "hidden_size", where))
    heads = int(_require(hf, "num_attention_heads", where))
    architectures = hf.get("architectures") or []
    is_score = any(a.endswith(("ForSequenceClassification", "ForRewardModel")) for a in architectures)
    num_labels = 1
    if is_score and architectures[0].endswith("ForSequenceClassification"):
        # transformers omits id2label when it has its default of two labels.
        num_labels = len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))
    if model_type == "internlm2":
        qkv_bias = o_bias = bool(hf.get("bias", False))
        mlp_bias = False
    elif model_type == "qwen2":
        qkv_bias, o_bias, mlp_bias = True, False, False
    else:
        qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    sliding = hf.get("sliding_window") if model_type == "mistral" else None
    return ModelConfig(
        family=model_type,
        vocab_size=int(_require(hf, "vocab_size", where)),
        hidden_size=hidden,
        intermediate_size=int(_require(hf, "intermediate_size", where)),
        num_layers=int(_require(hf, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        sliding_window=int(sliding) if sliding else None,
        head="score" if is_score else "lm",
        num_labels=num_labels,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
        reward_token_id=int(hf["reward_token_id"]) if is_score and hf.get("reward_token_id") is not None else None,
        **runtime,
    )


def to_hf_config(cfg: ModelConfig, *, torch_dtype: str | None = None) -> dict[str, Any]:
    """The `config.json` dict that `transformers` (and InternLM2's remote code) reads back into the same model."""
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[(cfg.family, cfg.head)]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": torch_dtype or cfg.param_dtype,
    }
    if cfg.reward_token_id is not None:
        hf["reward_token_id"] = cfg.reward_token_id
    if cfg.rope_scaling is not None:
        scaling = dataclasses.asdict(cfg.rope_scaling)
        scaling["type"] = scaling["rope_type"]  # older transformers read `type`
        hf["rope_scaling"] = scaling
    if cfg.family == "internlm2":
        hf["bias"] = cfg.qkv_bias
        hf["auto_map"] = {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        }
    elif cfg.family == "qwen2":
        hf["use_sliding_window"] = False
    else:
        hf["attention_bias"] = cfg.qkv_bias
        hf["mlp_bias"] = cfg.mlp_bias
    if cfg.family == "mistral":
        hf["sliding_window"] = cfg.sliding_window
    if cfg.head == "score" and cfg.family != "internlm2":
        hf["num_labels"] = cfg.num_labels
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return hf


def load_config(model_dir: str | Path, **runtime: Any) -> ModelConfig:
    """Read `<model_dir>/config.json`; a missing file or bad JSON is an error naming the path."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no config.json (is {model_dir} a Hugging Face model directory?)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    return from_hf_config(hf, where=str(path), **runtime)


def save_config(cfg: ModelConfig, model_dir: str | Path, *, torch_dtype: str | None = None) -> None:
    path = Path(model_dir) / "config.json"
    path.write_text(json.dumps(to_hf_config(cfg, torch_dtype=torch_dtype), indent=2, sort_keys=True) + "\n")
