"""Attention masks from positions and segment ids, and the attention op itself.

One mask rule serves training, packing and decoding: a query attends a key iff both belong to the same non-zero
segment, the key's position is not after the query's, and (with a sliding window) the key is inside the window.
Packed rows (several examples per row) and KV caches (slots holding one request each) are just segment ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_attention_mask(
    q_positions: jax.Array,
    q_segment_ids: jax.Array,
    kv_positions: jax.Array,
    kv_segment_ids: jax.Array,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean mask [batch, 1, q_len, kv_len]; segment id 0 marks padding / empty cache entries."""
    q_pos = q_positions[:, :, None]
    kv_pos = kv_positions[:, None, :]
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    mask = same_segment & (kv_segment_ids[:, None, :] != 0) & (kv_pos <= q_pos)
    if sliding_window is not None:
        mask &= kv_pos > q_pos - sliding_window
    return mask[:, None, :, :]


def attend(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: query [b, t, heads, d], key/value [b, s, kv_heads, d] -> [b, t, heads, d].

    Delegates to `jax.nn.dot_product_attention`, which picks a fused kernel where the backend has one. Rows with
    no visible key (padding queries) come out finite and are ignored downstream.
    """
    return jax.nn.dot_product_attention(query, key, value, mask=mask)


def attend_cached(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention over a KV cache: query [b, t, heads, d], key [b, kv_heads, s, d], value
    [b, kv_heads, d, s] -> [b, t, heads, d]. The same math as `attend` (float32 logits and softmax, probabilities
    cast back).

    A decode step (one query per row) on CPU is computed as products and sums instead of matrix products: XLA:CPU
    hands each of these batched [groups, d] x [d, s] products to its matmul library, which at 64 slots of a
    100M model spent 4.6 ms a layer where the fused multiply-sum takes 1.2 ms (the decode step's attention was a
    third of the step). Other backends and prefill (many query rows) keep the products.
    """
    if query.shape[1] == 1:
        return jax.lax.platform_dependent(query, key, value, mask, cpu=_attend_cached_by_sums,
                                          default=_attend_cached_by_products)
    return _attend_cached_by_products(query, key, value, mask)


def _grouped(query: jax.Array, kv_heads: int) -> jax.Array:
    """[b, t, heads, d] -> [b, kv_heads, t * groups, d]: each kv head's queries as the rows of one matrix."""
    b, t, heads, d = query.shape
    groups = heads // kv_heads
    return query.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * groups, d)


def _ungrouped(out: jax.Array, t: int) -> jax.Array:
    """[b, kv_heads, t * groups, d] -> [b, t, heads, d]."""
    b, kv_heads, rows, d = out.shape
    groups = rows // t
    return out.reshape(b, kv_heads, t, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, t, kv_heads * groups, d)


def _masked_probs(logits: jax.Array, mask: jax.Array, groups: int, dtype) -> jax.Array:
    visible = jnp.repeat(mask, groups, axis=2)  # [b, 1, t, s] -> [b, 1, t * groups, s], rows as in the queries
    logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min / 2)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


def _attend_cached_by_products(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    t, d, kv_heads = query.shape[1], query.shape[3], key.shape[1]
    q = _grouped(query, kv_heads)
    logits = jnp.einsum("bkqd,bksd->bkqs", q, key, preferred_element_type=jnp.float32) * d**-0.5
    probs = _masked_probs(logits, mask, query.shape[2] // kv_heads, value.dtype)
    return _ungrouped(jnp.einsum("bkqs,bkds->bkqd", probs, value), t)


def _attend_cached_by_sums(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """`_attend_cached_by_products` as elementwise products reduced over their minor axis (d for the logits, s
    for the values: both contiguous in the cache's layouts), accumulated in float32 like the products."""
    t, d, kv_heads = query.shape[1], query.shape[3], key.shape[1]
    q = _grouped(query, kv_heads).astype(jnp.float32)
    logits = jnp.sum(q[:, :, :, None, :] * key[:, :, None, :, :].astype(jnp.float32), axis=-1) * d**-0.5
    probs = _masked_probs(logits, mask, query.shape[2] // kv_heads, value.dtype)
    out = jnp.sum(probs[:, :, :, None, :].astype(jnp.float32) * value[:, :, None, :, :].astype(jnp.float32), axis=-1)
    return _ungrouped(out.astype(value.dtype), t)
