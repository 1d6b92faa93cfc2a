"""The `config.json` shape fields of the hub models the shipped configs name, so `sq-jax plan` works offline (no
download, no HF cache). Copied from each model's public config.json; a model not listed is read from its local
folder or the HF cache, or its config.json alone is fetched from the hub."""

from __future__ import annotations

_QWEN25_1_5B = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=1536,
                    intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)

KNOWN_SHAPES: dict[str, dict] = {
    "Qwen/Qwen2.5-Math-1.5B-Instruct": {**_QWEN25_1_5B, "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "Qwen/Qwen2.5-Math-1.5B": {**_QWEN25_1_5B, "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "Qwen/Qwen2.5-1.5B-Instruct": {**_QWEN25_1_5B, "rope_theta": 1000000.0, "max_position_embeddings": 32768},
    "internlm/internlm2-1_8b-reward": dict(
        model_type="internlm2", architectures=["InternLM2ForRewardModel"], vocab_size=92544, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
        rms_norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=False,
        bias=False),
}
