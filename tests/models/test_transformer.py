"""Decoder behaviour beyond parity: packing, KV-cache decoding, remat, dtypes, config round trip."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sq_jax.models.config import ModelConfig, RopeScaling, from_hf_config, to_hf_config
from sq_jax.models.init import init_model
from sq_jax.models.kv_cache import init_cache
from sq_jax.models.transformer import pool_last_token
from sq_jax.sampling.simple import generate

CFG = ModelConfig(
    family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, qkv_bias=True, max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=1)


@nnx.jit
def forward(model, ids, positions=None, segment_ids=None):
    return model(ids, positions, segment_ids).logits


def right_padded(seq: list[int], length: int) -> tuple[jax.Array, jax.Array]:
    """Fixed-shape input (one compile for every prefix length): ids and segment ids."""
    ids = np.zeros((1, length), np.int32)
    ids[0, : len(seq)] = seq
    return jnp.asarray(ids), jnp.asarray((np.arange(length) < len(seq))[None].astype(np.int32))


def test_packed_examples_equal_examples_alone(model):
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(1, 64, n).astype(np.int32) for n in (5, 7, 3))
    packed = np.concatenate([a, b, c, np.zeros(1, np.int32)])[None]
    segments = np.array([[1] * 5 + [2] * 7 + [3] * 3 + [0]], np.int32)
    positions = np.array([list(range(5)) + list(range(7)) + list(range(3)) + [0]], np.int32)
    got = np.asarray(forward(model, jnp.asarray(packed), jnp.asarray(positions), jnp.asarray(segments)))[0]
    offset = 0
    for example in (a, b, c):
        ids, seg = right_padded(list(example), 16)
        alone = np.asarray(forward(model, ids, None, seg))[0, : len(example)]
        np.testing.assert_allclose(got[offset : offset + len(example)], alone, atol=1e-5)
        offset += len(example)


def test_cached_decoding_equals_full_forward(model):
    prompt = np.array([[5, 9, 2, 33, 17]], np.int32)
    tokens = generate(model, prompt.tolist(), max_new_tokens=8)[0]
    assert len(tokens) == 8
    seq = list(prompt[0])
    for tok in tokens:  # uncached: re-run the whole sequence each step
        ids, seg = right_padded(seq, 16)
        logits = np.asarray(forward(model, ids, None, seg))[0, len(seq) - 1]
        assert tok == int(np.argmax(logits))
        seq.append(tok)


def test_cache_logits_match_uncached_for_left_padded_batch(model):
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10]]
    full = np.asarray(model(jnp.asarray([prompts[1] + [11, 12]])).logits)[0]
    cache = init_cache(CFG, 2, 16)
    ids = jnp.asarray([prompts[0], [0] * 4 + prompts[1]])
    seg = jnp.asarray([[1] * 6, [0] * 4 + [1] * 2])
    pos = jnp.asarray([list(range(6)), [0] * 4 + [0, 1]])
    out = model(ids, pos, seg, cache)
    step = model(jnp.asarray([[1], [11]]), jnp.asarray([[6], [2]]), jnp.ones((2, 1), jnp.int32), out.cache)
    step2 = model(jnp.asarray([[1], [12]]), jnp.asarray([[7], [3]]), jnp.ones((2, 1), jnp.int32), step.cache)
    np.testing.assert_allclose(np.asarray(out.logits)[1, -1], full[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(step.logits)[1, 0], full[2], atol=1e-5)
    np.testing.assert_allclose(np.asarray(step2.logits)[1, 0], full[3], atol=1e-5)
    assert np.asarray(step2.cache.lengths).tolist() == [8, 8]


def test_stop_tokens_end_generation(model):
    first = generate(model, [[1, 2, 3]], max_new_tokens=6)[0]
    stopped = generate(model, [[1, 2, 3]], max_new_tokens=6, stop_ids=[first[2]])[0]
    assert stopped == first[: first.index(first[2])]


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_same_gradients(policy):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)

    def loss_grads(cfg):
        m = init_model(cfg, seed=2)

        def loss(m):
            return jnp.mean(jax.nn.logsumexp(m(ids).logits, axis=-1))

        return nnx.grad(loss)(m)

    plain = jax.tree.leaves(loss_grads(CFG))
    remat = jax.tree.leaves(loss_grads(CFG.replace(remat=policy)))
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bf16_compute_stays_close_to_f32():
    m32 = init_model(CFG, seed=4)
    m16 = init_model(CFG.replace(dtype="bfloat16"), seed=4)
    ids = jnp.asarray([[1, 5, 9, 13, 2]])
    a, b = m32(ids).logits, m16(ids).logits
    assert b.dtype == jnp.float32  # logits always float32
    assert m16.layers[0].attn.q_proj[...].dtype == jnp.float32  # master weights stay float32
    assert float(jnp.abs(a - b).max()) < 0.05


def test_pool_last_token_picks_last_real_token():
    per_token = jnp.arange(12.0).reshape(2, 6, 1)
    segments = jnp.asarray([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])
    assert pool_last_token(per_token, segments)[:, 0].tolist() == [2.0, 11.0]


def test_hf_config_round_trip_all_fields():
    cfg = CFG.replace(
        family="llama", qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True, rope_theta=5e5,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0,
    )
    assert from_hf_config(to_hf_config(cfg)) == cfg
    for family in ("qwen2", "mistral", "internlm2"):
        c = CFG.replace(family=family, qkv_bias=family != "mistral", o_bias=family == "internlm2",
                        sliding_window=16 if family == "mistral" else None)
        assert from_hf_config(to_hf_config(c)) == c
    score = CFG.replace(head="score", num_labels=3)
    assert from_hf_config(to_hf_config(score)) == score


def test_num_params_matches_model():
    for cfg in (CFG, CFG.replace(tie_word_embeddings=True), CFG.replace(head="score", num_labels=2),
                CFG.replace(family="llama", qkv_bias=True, o_bias=True, mlp_bias=True)):
        m = nnx.eval_shape(lambda: __import__("sq_jax.models.transformer", fromlist=["x"]).Transformer(cfg, rngs=nnx.Rngs(0)))
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
        assert count == cfg.num_params(), dataclasses.asdict(cfg)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        CFG.replace(family="gpt2")
    with pytest.raises(ValueError, match="num_attention_heads=4 is not a multiple of num_key_value_heads=3"):
        CFG.replace(num_kv_heads=3)
