"""Tiny random `transformers` models (torch, CPU, float32) for parity tests, saved as HF checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

VOCAB = 96
PAD_ID = 0

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    pad_token_id=PAD_ID,
    bos_token_id=1,
    eos_token_id=2,
    attn_implementation="eager",
)

# name -> (config class, model class, extra config)
VARIANTS = {
    "llama_gqa": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama_mha_theta": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {"num_key_value_heads": 4, "rope_theta": 1e6},
    ),
    "llama3_rope": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    "llama_linear_rope": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    ),
    "llama_biases": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {"attention_bias": True, "mlp_bias": True, "head_dim": 16},
    ),
    "mistral_window": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 4}),
    "qwen2_untied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {"tie_word_embeddings": False}),
    "qwen2_tied": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        {"tie_word_embeddings": True, "rope_theta": 1e6},
    ),
}

SCORE_VARIANTS = {
    "llama_score": (transformers.LlamaConfig, transformers.LlamaForSequenceClassification, {"num_labels": 1}),
    "qwen2_score": (transformers.Qwen2Config, transformers.Qwen2ForSequenceClassification, {"num_labels": 1}),
    "mistral_score2": (transformers.MistralConfig, transformers.MistralForSequenceClassification, {"num_labels": 2}),
}


def make_model(variant: str, seed: int = 0) -> torch.nn.Module:
    table = VARIANTS if variant in VARIANTS else SCORE_VARIANTS
    config_cls, model_cls, extra = table[variant]
    torch.manual_seed(seed)
    config = config_cls(**{**BASE, **extra})
    model = model_cls(config).eval()
    # Random init leaves norms at 1 and biases at 0: perturb them so a mapping mistake would show in logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save(model: torch.nn.Module, path: Path, **kwargs) -> Path:
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path


def batch(seed: int = 0, lengths: tuple[int, ...] = (12, 8, 10), total: int = 12):
    """Right-padded token ids and attention mask; real tokens avoid the pad id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(len(lengths), total))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = PAD_ID
    return ids.astype(np.int32), mask.astype(np.int32)


def torch_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, positions=None) -> np.ndarray:
    kwargs = {"attention_mask": torch.tensor(mask)}
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(positions, dtype=torch.long)
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long), **kwargs).logits.float().numpy()


def llama_to_internlm2(torch_model, cfg_extra=None) -> tuple[dict, dict]:
    """InternLM2 checkpoint (packed wqkv, its own names) holding the same weights as a Llama model."""
    c = torch_model.config
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    heads, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    g = heads // kv
    out = {
        "model.tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
    }
    if "lm_head.weight" in sd:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"].reshape(kv, g, d, -1)
        k = sd[p + "self_attn.k_proj.weight"].reshape(kv, 1, d, -1)
        v = sd[p + "self_attn.v_proj.weight"].reshape(kv, 1, d, -1)
        out[p + "attention.wqkv.weight"] = np.concatenate([q, k, v], axis=1).reshape(-1, c.hidden_size)
        out[p + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[p + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[p + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[p + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[p + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "bias": False,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        **(cfg_extra or {}),
    }
    return {k: np.ascontiguousarray(v) for k, v in out.items()}, config


def write_checkpoint(path, tensors, config):
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
