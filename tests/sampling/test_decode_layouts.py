"""The decode path's weight layouts: the weights the decode block reads are in the formats it was compiled for
(relaid out once, kept by prefill and generate), and XLA:CPU's decode block copies no weight per step."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax.experimental.layout import Format, Layout

from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.models.transformer import matmul_out_in
from sq_jax.sampling.engine import Engine
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams

# Sizes that no other array of the decode block shares, so a copy of a kernel is recognisable by its size.
CFG = ModelConfig(family="qwen2", vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=3,
                  num_kv_heads=1, head_dim=16, qkv_bias=True)
REQUESTS = [Request([i + 3, 8, 1, 40], SamplingParams(temperature=t, seed=i, max_tokens=9))
            for i, t in enumerate([0.0, 0.0, 0.0])]


def make_engine(model) -> Engine:
    return Engine(model, stop_ids=[95], max_slots=2, max_cache_length=40, max_prefill_length=16, decode_steps=4)


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=0)


@pytest.fixture(scope="module")
def engine(model):
    return make_engine(model)


def test_matmul_out_in_equals_the_einsum_over_every_input_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 48)).astype(np.float32)
    kernel = rng.normal(size=(3, 16, 48)).astype(np.float32)
    np.testing.assert_allclose(matmul_out_in(x, kernel, contracted=1).reshape(2, 3, 3, 16),
                               np.einsum("bte,hde->bthd", x, kernel), rtol=1e-5, atol=1e-5)
    heads = rng.normal(size=(2, 3, 3, 16)).astype(np.float32)
    o_kernel = rng.normal(size=(48, 3, 16)).astype(np.float32)
    np.testing.assert_allclose(matmul_out_in(heads.reshape(2, 3, 48), o_kernel, contracted=2),
                               np.einsum("bthd,ehd->bte", heads, o_kernel), rtol=1e-5, atol=1e-5)


def test_cpu_decode_block_copies_no_weight(engine):
    """XLA:CPU transposed every q/k/v/o kernel into [in, out] inside the decode loop (a full copy of the
    attention weights per token): no transpose or copy in the compiled block may produce a kernel's worth."""
    text = engine._state.lowered_block(False).compile().as_text()
    kernel_sizes = {x.size for x in jax.tree.leaves(engine.params) if x.ndim >= 2}
    relayouts = re.findall(r"= f32\[([0-9,]+)\]\{[^}]*\} (?:transpose|copy)\(", text)
    copied = [dims for dims in relayouts if int(np.prod([int(d) for d in dims.split(",")])) in kernel_sizes]
    assert not copied, f"weights relaid out in the decode block: {copied}"


def test_cpu_engine_holds_kernels_input_major_once_and_the_rest_as_the_model_does(model, engine):
    """On CPU every projection kernel is held [*in, *out] (values equal to the model's, transposed), in the
    default layouts XLA chose; every other leaf is the model's own array, not a copy."""
    from sq_jax.sampling.decode_weights import restore

    flat = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(engine.params)}
    ours = {jax.tree_util.keystr(path): leaf for path, leaf in
            jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
    q_key = next(k for k in flat if "q_proj" in k)
    assert flat[q_key].shape == (CFG.hidden_size, CFG.num_heads, CFG.head_dim)
    o_key = next(k for k in flat if "o_proj" in k)
    assert flat[o_key].shape == (CFG.num_heads, CFG.head_dim, CFG.hidden_size)
    kernels = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    for key, leaf in flat.items():
        assert leaf.format.layout.major_to_minor == tuple(range(leaf.ndim))
        if not any(name in key for name in kernels):
            assert leaf is ours[key], key
    restored = restore(engine.params, engine._state._perms)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cpu_engine_of_one_slot_holds_every_weight_as_the_model_does(model, engine):
    """One slot's products are matrix-vector products, which XLA:CPU runs faster against the model's own
    [out, in] kernels: nothing is rearranged or copied, no weight is copied in its decode block, and the tokens
    equal those of the several-slot engine (whose kernels are [in, out])."""
    single = Engine(model, stop_ids=[95], max_slots=1, max_cache_length=40, max_prefill_length=16, decode_steps=4)
    ours = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(a is b for a, b in zip(jax.tree.leaves(single.params), ours))
    test_cpu_decode_block_copies_no_weight(single)
    expected = [c.token_ids for c in run_loop(engine, REQUESTS)]
    assert [c.token_ids for c in run_loop(single, REQUESTS)] == expected


def test_weights_keep_a_forced_layout_through_prefill_and_generate(model, engine):
    """Forced into a non-default layout (as a backend's compiler might choose), the weights are relaid out once
    (only the leaves whose format changed are copied) and every program takes them as they are, with unchanged
    outputs."""
    from sq_jax.sampling.state_layout import relayout

    expected = [c.token_ids for c in run_loop(engine, REQUESTS)]
    forced_engine = make_engine(model)
    programs = forced_engine._state
    programs.formats(False)
    before = jax.tree.leaves(programs._params)
    formats = jax.tree_util.tree_map_with_path(
        lambda path, f: Format(Layout(major_to_minor=(2, 0, 1)), f.sharding) if "q_proj" in jax.tree_util.keystr(path)
        else f, programs._param_formats)
    programs._param_formats, programs._generate, programs._programs = formats, {}, {}
    programs._params = relayout(programs._params, formats)
    assert [c.token_ids for c in run_loop(forced_engine, REQUESTS)] == expected
    q_proj = forced_engine.params["layers"][0]["attn"]["q_proj"].get_value()
    assert q_proj.format.layout.major_to_minor == (2, 0, 1)
    assert sum(a is not b for a, b in zip(jax.tree.leaves(forced_engine.params), before)) == CFG.num_layers
