"""Model shapes the benchmarks share, and the qwen2 config / `transformers` config built from one."""

from __future__ import annotations

from sq_jax.models.config import ModelConfig

SHAPES = {
    # The tiny default's shape (vocab padded like the real tokenizer would be).
    "tiny": dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2,
                 head_dim=64),
    # ~100M (400 MB in float32): the CPU's large shape, where batch-1 decode is bound by memory bandwidth.
    "100m": dict(vocab_size=32768, hidden_size=768, intermediate_size=2048, num_layers=8, num_heads=12,
                 num_kv_heads=4, head_dim=64),
    # ~1.1B: Qwen2.5-1.5B-like proportions with a 32K vocab.
    "1b": dict(vocab_size=32768, hidden_size=2048, intermediate_size=5632, num_layers=20, num_heads=16,
               num_kv_heads=8, head_dim=128),
}


def qwen2_config(shape: str, **runtime: str) -> ModelConfig:
    return ModelConfig(family="qwen2", qkv_bias=True, max_position_embeddings=8192, **runtime, **SHAPES[shape])


def transformers_config(cfg: ModelConfig):
    """The same shape as a `transformers` Qwen2 config (SDPA attention, untied head)."""
    import transformers

    return transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False, attn_implementation="sdpa",
    )
