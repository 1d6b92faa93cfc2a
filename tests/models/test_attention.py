"""Cached attention's two forms: the products (prefill, GPU, TPU) and the CPU decode step's sums are the same
attention, for grouped queries, masks and bfloat16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sq_jax.models import attention


def _inputs(dtype, batch=3, heads=6, kv_heads=2, d=16, s=24, seed=0):
    rng = np.random.default_rng(seed)
    query = jnp.asarray(rng.normal(size=(batch, 1, heads, d)), dtype)
    key = jnp.asarray(rng.normal(size=(batch, kv_heads, s, d)), dtype)
    value = jnp.asarray(rng.normal(size=(batch, kv_heads, d, s)), dtype)
    mask = rng.random((batch, 1, 1, s)) < 0.6
    mask[:, :, :, 0] = True  # every row sees a key
    return query, key, value, jnp.asarray(mask)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_decode_attention_by_sums_equals_the_products(dtype, tol):
    args = _inputs(dtype)
    by_products = attention._attend_cached_by_products(*args)
    by_sums = attention._attend_cached_by_sums(*args)
    assert by_sums.dtype == by_products.dtype == dtype
    np.testing.assert_allclose(np.asarray(by_sums, np.float32), np.asarray(by_products, np.float32), rtol=tol,
                               atol=tol)


def test_decode_attention_equals_a_hand_computation():
    query, key, value, mask = _inputs(jnp.float32)
    q = np.asarray(query)[:, 0].reshape(3, 2, 3, 16)  # [b, kv_heads, groups, d]
    logits = np.einsum("bkgd,bksd->bkgs", q, np.asarray(key)) / 4.0
    logits = np.where(np.asarray(mask)[:, :, 0][:, :, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bkgs,bkds->bkgd", probs, np.asarray(value)).reshape(3, 1, 6, 16)
    np.testing.assert_allclose(np.asarray(jax.jit(attention.attend_cached)(query, key, value, mask)), expected,
                               rtol=1e-5, atol=1e-5)


def test_cpu_decode_step_attends_without_matrix_products():
    """XLA:CPU ran these batched [groups, d] x [d, s] products through its matmul library at 4x the cost of the
    fused sums (64 slots, 100M shape); a prefill (many query rows) keeps them."""
    query, key, value, mask = _inputs(jnp.float32)
    decode = jax.jit(attention.attend_cached).lower(query, key, value, mask).as_text()
    assert "dot_general" not in decode
    prefill_query = jnp.concatenate([query] * 4, axis=1)
    prefill_mask = jnp.concatenate([mask] * 4, axis=2)
    prefill = jax.jit(attention.attend_cached).lower(prefill_query, key, value, prefill_mask).as_text()
    assert prefill.count("dot_general") == 2
