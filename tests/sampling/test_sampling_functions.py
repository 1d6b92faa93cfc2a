"""Pure sampling functions on hand-made distributions."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sq_jax.sampling.sampling import (SamplingParams, filter_logits, greedy_token, sample_token,
                                     sampling_from_request)

PROBS = np.array([0.05, 0.4, 0.1, 0.3, 0.15])  # sorted: 1 (.4), 3 (.3), 4 (.15), 2 (.1), 0 (.05)
LOGITS = jnp.log(jnp.asarray(PROBS))


def kept(temperature=1.0, top_p=1.0, top_k=0):
    out = filter_logits(LOGITS, jnp.float32(temperature), jnp.float32(top_p), jnp.int32(top_k))
    return sorted(np.flatnonzero(np.isfinite(np.asarray(out))).tolist())


@pytest.mark.parametrize("top_p, expected", [
    (1.0, [0, 1, 2, 3, 4]), (0.4, [1]), (0.41, [1, 3]), (0.7, [1, 3]), (0.71, [1, 3, 4]), (0.84, [1, 3, 4]),
    (0.86, [1, 2, 3, 4]), (0.05, [1]),
])
def test_top_p_keeps_smallest_set_reaching_p(top_p, expected):
    assert kept(top_p=top_p) == expected


@pytest.mark.parametrize("top_k, expected", [(1, [1]), (2, [1, 3]), (3, [1, 3, 4]), (0, [0, 1, 2, 3, 4]),
                                             (9, [0, 1, 2, 3, 4])])
def test_top_k_keeps_k_most_likely(top_k, expected):
    assert kept(top_k=top_k) == expected


def test_top_k_then_top_p_on_renormalised_mass():
    # top-k 3 leaves .4 .3 .15 (renormalised .47 .35 .18); top-p .8 then keeps the first two only.
    assert kept(top_k=3, top_p=0.8) == [1, 3]


def test_temperature_zero_is_greedy_and_deterministic():
    keys = jax.random.split(jax.random.key(0), 20)
    picks = {int(sample_token(LOGITS, k, jnp.float32(0.0), jnp.float32(1.0), jnp.int32(0))) for k in keys}
    assert picks == {1}


def test_greedy_token_is_argmax_first_maximum_and_first_nan_included():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    logits[1, [7, 30]] = 9.0  # a tie: the first maximum wins
    logits[2, :] = -np.inf  # nothing finite: index 0, as argmax
    logits[3, [4, 20]] = np.nan  # a NaN is argmax's maximum: the first one
    logits[4, :] = 1.0  # all equal
    logits[5, 49] = np.inf
    got = np.asarray(jax.jit(greedy_token)(jnp.asarray(logits)))
    assert got.dtype == np.int32
    assert got.tolist() == np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)).tolist()
    assert got[1:].tolist() == [7, 0, 4, 0, 49]
    bf16 = jnp.asarray(logits[:2], jnp.bfloat16)
    assert np.asarray(greedy_token(bf16)).tolist() == np.asarray(jnp.argmax(bf16, axis=-1)).tolist()


def test_cpu_greedy_token_compiles_without_a_value_and_index_reduction():
    """jnp.argmax is one reduction over (value, index) pairs, which XLA:CPU emits as scalar code (4.6 ms of a
    113 ms decode step at 64 slots and a 32K vocabulary); greedy_token's two reductions have one output each."""
    text = jax.jit(greedy_token).lower(jnp.zeros((64, 32768), jnp.float32)).compile().as_text()
    assert not re.search(r"= \(f32\[64\]\{0\}, s32\[64\]\{0\}\) (reduce|fusion)\(", text), text


def test_sampled_frequencies_match_filtered_distribution():
    keys = jax.random.split(jax.random.key(1), 20000)
    draw = jax.jit(jax.vmap(lambda k: sample_token(LOGITS, k, jnp.float32(1.0), jnp.float32(0.86), jnp.int32(0))))
    counts = np.bincount(np.asarray(draw(keys)), minlength=5)
    expected = np.array([0, 0.4, 0.1, 0.3, 0.15]) / 0.95
    assert counts[0] == 0
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.015)
    # Temperature 2 flattens: frequencies follow p^(1/2) renormalised.
    hot = jax.jit(jax.vmap(lambda k: sample_token(LOGITS, k, jnp.float32(2.0), jnp.float32(1.0), jnp.int32(0))))
    counts = np.bincount(np.asarray(hot(keys)), minlength=5)
    flat = np.sqrt(PROBS) / np.sqrt(PROBS).sum()
    np.testing.assert_allclose(counts / counts.sum(), flat, atol=0.015)


@pytest.mark.parametrize("kwargs, message", [
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
])
def test_bad_sampling_values_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_request_sampling_json():
    default = SamplingParams(temperature=0.7, max_tokens=99)
    got = sampling_from_request('{"sq_jax": {"temperature": 0.0, "seed": 5}}', 0, default)
    assert got == SamplingParams(temperature=0.0, seed=5, max_tokens=99)
    assert sampling_from_request("", 7, default).max_tokens == 7
    with pytest.raises(ValueError, match="unknown sampling fields"):
        sampling_from_request('{"sq_jax": {"temp": 1}}', 0, default)
    with pytest.raises(ValueError, match="session_cache must be JSON"):
        sampling_from_request("history/path", 0, default)
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling_from_request('{"sq_jax": {"top_p": 0}}', 0, default)


def test_request_key_matches_jax_key_data():
    from sq_jax.sampling.sampling import request_key

    for seed in (0, 1, 7, 2**31 - 1):
        np.testing.assert_array_equal(request_key(seed), np.asarray(jax.random.key_data(jax.random.key(seed))))
