"""Per-slot KV cache for decoding: every batch row ("slot") holds one sequence and its own write offset.

Cache entries carry positions and segment ids, so the same `make_attention_mask` used in training decides what a
new token sees: empty entries have segment id 0 and are never attended.

K and V are stored head-major with the axis their attention product contracts minor: K [batch, kv_heads,
max_len, head_dim] (q.k contracts head_dim), V [batch, kv_heads, head_dim, max_len] (p.v contracts the
sequence). Those are the layouts XLA's GPU compiler picks for a decode step; stored sequence-major ([batch,
max_len, kv_heads, head_dim]) every layer's cache was transposed into and out of each decode block, and with
one layout for both, one of the two was transposed on every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from sq_jax.models.config import ModelConfig


@struct.dataclass
class KVCache:
    # One buffer per layer (not one stacked array): a step updates each in place instead of re-stacking the lot.
    k: tuple[jax.Array, ...]  # per layer [batch, kv_heads, max_len, head_dim]
    v: tuple[jax.Array, ...]  # per layer [batch, kv_heads, head_dim, max_len]
    positions: jax.Array  # [batch, max_len] int32
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = empty
    lengths: jax.Array  # [batch] int32: entries written so far = next write offset

    @property
    def max_length(self) -> int:
        return self.positions.shape[1]


def kv_shapes(cfg: ModelConfig, batch: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-layer K and V shapes of a cache of `batch` rows and `length` entries."""
    return (batch, cfg.num_kv_heads, length, cfg.head_dim), (batch, cfg.num_kv_heads, cfg.head_dim, length)


def init_cache(cfg: ModelConfig, batch: int, max_length: int, dtype: jnp.dtype | str | None = None) -> KVCache:
    dtype = jnp.dtype(dtype or cfg.dtype)
    k_shape, v_shape = kv_shapes(cfg, batch, max_length)
    return KVCache(
        k=tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)),
        positions=jnp.zeros((batch, max_length), jnp.int32),
        segment_ids=jnp.zeros((batch, max_length), jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
    )


def write_rows(buffer: jax.Array, new: jax.Array, offsets: jax.Array, axis: int = 1) -> jax.Array:
    """Write `new` into `buffer` at a per-row (axis 0) offset along `axis`: [batch, t] into [batch, max_len],
    K's [batch, kv_heads, t, head_dim] (axis=2) or V's [batch, kv_heads, head_dim, t] (axis=3).

    Offsets past `max_len - t` are clamped by `dynamic_update_slice`; callers keep lengths within the cache.
    """

    if buffer.shape[0] == 1:
        # One row (a batch-1 engine, a one-prompt prefill): a plain update. Batched over rows it is a scatter,
        # which XLA:CPU runs as a bounds check, a select and a separate kernel per buffer on every decode step.
        start = tuple(offsets[0] if d == axis else 0 for d in range(buffer.ndim))
        return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), start)

    def one_row(row: jax.Array, update: jax.Array, offset: jax.Array) -> jax.Array:
        start = tuple(offset if d == axis - 1 else 0 for d in range(row.ndim))
        return jax.lax.dynamic_update_slice(row, update.astype(row.dtype), start)

    return jax.vmap(one_row)(buffer, new, offsets)
