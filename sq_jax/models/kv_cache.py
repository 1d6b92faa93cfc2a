"""Per-slot KV cache for decoding: every batch row ("slot") holds one sequence and its own write offset.

Cache entries carry positions and segment ids, so the same `make_attention_mask` used in training decides what a
new token sees: empty entries have segment id 0 and are never attended.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from sq_jax.models.config import ModelConfig


@struct.dataclass
class KVCache:
    # One buffer per layer (not one stacked array): a step updates each in place instead of re-stacking the lot.
    k: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
    v: tuple[jax.Array, ...]
    positions: jax.Array  # [batch, max_len] int32
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = empty
    lengths: jax.Array  # [batch] int32: entries written so far = next write offset

    @property
    def max_length(self) -> int:
        return self.k[0].shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_length: int, dtype: jnp.dtype | str | None = None) -> KVCache:
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_length, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        positions=jnp.zeros((batch, max_length), jnp.int32),
        segment_ids=jnp.zeros((batch, max_length), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
    )


def write_rows(buffer: jax.Array, new: jax.Array, offsets: jax.Array) -> jax.Array:
    """Write `new` [batch, t, ...] into `buffer` [batch, max_len, ...] at a per-row offset along axis 1.

    Offsets past `max_len - t` are clamped by `dynamic_update_slice`; callers keep lengths within the cache.
    """

    def one_row(row: jax.Array, update: jax.Array, offset: jax.Array) -> jax.Array:
        start = (offset,) + (0,) * (row.ndim - 1)
        return jax.lax.dynamic_update_slice(row, update.astype(row.dtype), start)

    return jax.vmap(one_row)(buffer, new, offsets)
