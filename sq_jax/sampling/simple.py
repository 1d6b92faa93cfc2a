"""A plain batched decode loop on the KV cache: greedy or temperature sampling, stop tokens, max tokens.

Good for smoke runs and tests; the JetStream engine is the production path for large batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sq_jax.models.kv_cache import init_cache
from sq_jax.models.transformer import Transformer


@nnx.jit
def _prefill(model: Transformer, ids, positions, segment_ids, cache):
    out = model(ids, positions, segment_ids, cache)
    return out.logits, out.cache


@nnx.jit
def _decode_step(model: Transformer, token, position, cache):
    out = model(token[:, None], position[:, None], jnp.ones_like(token)[:, None], cache)
    return out.logits[:, -1], out.cache


def _pick(logits: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """New tokens for each prompt (stop token excluded). Prompts are left-padded into one prefill call."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    batch, longest = len(prompts), max(len(p) for p in prompts)
    ids = np.zeros((batch, longest), np.int32)
    segments = np.zeros((batch, longest), np.int32)
    positions = np.zeros((batch, longest), np.int32)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        ids[row, start:] = prompt
        segments[row, start:] = 1
        positions[row, start:] = np.arange(len(prompt))
    cache = init_cache(model.config, batch, longest + max_new_tokens)
    logits, cache = _prefill(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segments), cache)
    key = jax.random.key(seed)
    key, sub = jax.random.split(key)
    token = _pick(logits[:, -1], sub, temperature)
    position = jnp.asarray([len(p) for p in prompts], jnp.int32)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = np.zeros(batch, bool)
    stop = set(int(s) for s in stop_ids)
    for step in range(max_new_tokens):
        host_tokens = np.asarray(token)
        for row in range(batch):
            if not done[row]:
                if int(host_tokens[row]) in stop:
                    done[row] = True
                else:
                    outputs[row].append(int(host_tokens[row]))
        if done.all() or step == max_new_tokens - 1:
            break
        logits, cache = _decode_step(model, token, position, cache)
        key, sub = jax.random.split(key)
        token = _pick(logits, sub, temperature)
        position = position + 1
    return outputs
