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
    cast back)."""
    b, t, heads, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # [b, kv_heads, t * groups, d]: each kv head's queries as the rows of one matrix product.
    q = query.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * groups, d)
    logits = jnp.einsum("bkqd,bksd->bkqs", q, key, preferred_element_type=jnp.float32) * d**-0.5
    visible = jnp.repeat(mask, groups, axis=2)  # [b, 1, t, s] -> [b, 1, t * groups, s], rows as in q
    logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min / 2)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkqs,bkds->bkqd", probs, value)
    return out.reshape(b, kv_heads, t, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, t, heads, d)
