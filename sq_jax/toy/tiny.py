"""The tiny embedded default: a qwen2-family model (random init, ~4M params) with its own BPE tokenizer.

Built offline in seconds from procedural seed problems, saved in HF format, so every stage of the pipeline runs
on it exactly as on a 7B checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from sq_jax.models.config import ModelConfig
from sq_jax.models.hf_io import save_pretrained
from sq_jax.models.init import init_model
from sq_jax.prompts.formats import get_prompt_format
from sq_jax.prompts.optimiser import DIRECTIONS, optimiser_messages
from sq_jax.toy.problems import generate_problems
from sq_jax.toy.tokenizer import train_tiny_tokenizer

TINY_SHAPE = dict(
    hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
)
# Vocab rounded up so every tensor-parallel size up to 64 divides it (as real checkpoints pad theirs).
_VOCAB_MULTIPLE = 64


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    vocab = -(-vocab_size // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
    fields = dict(
        family="qwen2", vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
        qkv_bias=True, tie_word_embeddings=False, **TINY_SHAPE,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def build_tiny(
    out_dir: str | Path, *, seed: int = 0, num_texts: int = 4000, vocab_size: int = 2048, **shape: int
) -> Path:
    """Train the tokenizer on procedural questions and solutions, init the model from `seed`, save both.

    `shape` overrides TINY_SHAPE (tests use an even smaller model)."""
    out = Path(out_dir)
    problems = generate_problems(num_texts, seed=seed, unsolvable_fraction=0.1)
    fmt = get_prompt_format("qwen")
    texts = [p.question for p in problems] + [p.solution for p in problems]
    texts += [fmt.qft_text(p.question) for p in problems[:200]]
    # The optimiser's chat requests too: the tiny optimiser reads them, and seen words cost one token, not several
    # (its prompt is ~300 tokens instead of ~600).
    texts += [fmt.chat(optimiser_messages(p.question, d), add_generation_prompt=True)
              for p in problems[:100] for d in DIRECTIONS]
    tokenizer = train_tiny_tokenizer(texts, vocab_size=vocab_size)
    cfg = tiny_config(
        len(tokenizer),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    model = init_model(cfg, seed=seed)
    save_pretrained(model, out, dtype="float32", tokenizer=tokenizer)
    generation = {"eos_token_id": [cfg.eos_token_id, tokenizer.pad_token_id], "pad_token_id": cfg.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
