"""One decoder for every family (Llama, Mistral, Qwen2, InternLM2) in Flax NNX.

Parameters carry logical axis names in their `logical_axes` metadata (see `parallel/sharding.py`); projection
kernels keep heads as their own axis ([heads, head_dim, embed]) so tensor parallelism shards whole heads.

Every projection kernel is stored [out, in], as `transformers` stores Linear weights, so each kernel's contracted
axis is its minor (contiguous) one. That is the layout XLA's GPU compiler wants when it turns a decoding
vector-matrix product into a row reduction; with [in, out] kernels it transposed every q/k/v kernel once per
decode block and wrote out a full elementwise product for o_proj on every step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sq_jax.models.attention import attend, attend_cached, make_attention_mask
from sq_jax.models.config import ModelConfig
from sq_jax.models.kv_cache import KVCache, write_rows
from sq_jax.models.rope import apply_rope, rope_inv_freq
from sq_jax.parallel.sharding import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype: str, init: str = "normal"):
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


def matmul_out_in(x: jax.Array, kernel: jax.Array, contracted: int) -> jax.Array:
    """`x` [..., in] times an [*out, *in] kernel whose last `contracted` axes are the input: [..., prod(out)].

    The decode path's form of the q/k/v/o products: the kernel flattened to one [out, in] matrix (a free reshape
    of a row-major array). XLA:CPU canonicalises a product with several output or contracted axes by copying
    the kernel into [in, out] order (inside the decode loop: every q/k/v/o kernel on every step); a 2-D product
    it runs against the kernel as stored, and the transpose that `sampling/decode_weights.restore` wraps around
    an [in, out]-stored kernel folds into it.
    """
    flat = kernel.reshape(-1, math.prod(kernel.shape[kernel.ndim - contracted:]))
    return jnp.einsum("...i,oi->...o", x, flat)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.scale = _param(rngs, (cfg.hidden_size,), ("norm",), cfg.param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        # As transformers: normalise in float32, cast back, then scale.
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, n, k, d, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
        self.cfg = cfg
        self.q_proj = _param(rngs, (n, d, e), ("heads", "head_dim", "embed"), pd)
        self.k_proj = _param(rngs, (k, d, e), ("kv_heads", "head_dim", "embed"), pd)
        self.v_proj = _param(rngs, (k, d, e), ("kv_heads", "head_dim", "embed"), pd)
        self.o_proj = _param(rngs, (e, n, d), ("embed", "heads", "head_dim"), pd)
        if cfg.qkv_bias:
            self.q_bias = _param(rngs, (n, d), ("heads", "head_dim"), pd, "zeros")
            self.k_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), pd, "zeros")
            self.v_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), pd, "zeros")
        if cfg.o_bias:
            self.o_bias = _param(rngs, (e,), ("norm",), pd, "zeros")

    def _project(self, x: jax.Array, name: str, decoding: bool = False) -> jax.Array:
        kernel = getattr(self, f"{name}_proj")[...].astype(x.dtype)
        if decoding:
            out = matmul_out_in(x, kernel, contracted=1).reshape(*x.shape[:2], *kernel.shape[:2])
        else:
            out = jnp.einsum("bte,hde->bthd", x, kernel)
        if self.cfg.qkv_bias:
            out = out + getattr(self, f"{name}_bias")[...].astype(x.dtype)
        return out

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        write_offsets: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        inv_freq = rope_inv_freq(self.cfg)
        decoding = cache_kv is not None
        q = apply_rope(self._project(x, "q", decoding), positions, inv_freq)
        k = apply_rope(self._project(x, "k", decoding), positions, inv_freq)
        v = self._project(x, "v", decoding)
        q = constrain(q, ("batch", "length", "act_heads", None))
        if cache_kv is None:
            out = attend(q, k, v, mask)
        else:
            k = write_rows(cache_kv[0], k.transpose(0, 2, 1, 3), write_offsets, axis=2)
            v = write_rows(cache_kv[1], v.transpose(0, 2, 3, 1), write_offsets, axis=3)
            out = attend_cached(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        o_kernel = self.o_proj[...].astype(x.dtype)
        if decoding:
            out = matmul_out_in(out.reshape(*out.shape[:2], -1), o_kernel, contracted=2)
        else:
            out = jnp.einsum("bthd,ehd->bte", out, o_kernel)
        if self.cfg.o_bias:
            out = out + self.o_bias[...].astype(x.dtype)
        return out, (k, v)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, m, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.bias = cfg.mlp_bias
        self.gate_proj = _param(rngs, (m, e), ("mlp", "embed"), pd)
        self.up_proj = _param(rngs, (m, e), ("mlp", "embed"), pd)
        self.down_proj = _param(rngs, (e, m), ("embed", "mlp"), pd)
        if cfg.mlp_bias:
            self.gate_bias = _param(rngs, (m,), ("mlp",), pd, "zeros")
            self.up_bias = _param(rngs, (m,), ("mlp",), pd, "zeros")
            self.down_bias = _param(rngs, (e,), ("norm",), pd, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jnp.einsum("bte,me->btm", x, self.gate_proj[...].astype(x.dtype))
        up = jnp.einsum("bte,me->btm", x, self.up_proj[...].astype(x.dtype))
        if self.bias:
            gate = gate + self.gate_bias[...].astype(x.dtype)
            up = up + self.up_bias[...].astype(x.dtype)
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        out = jnp.einsum("btm,em->bte", hidden, self.down_proj[...].astype(x.dtype))
        if self.bias:
            out = out + self.down_bias[...].astype(x.dtype)
        return out


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.post_attention_norm = RMSNorm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, cache_kv=None, write_offsets=None):
        attn_out, kv = self.attn(self.input_norm(x), positions, mask, cache_kv, write_offsets)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_norm(x))
        return constrain(x, ("batch", "length", "act_embed")), kv


def _remat_layer(layer: DecoderLayer, policy, *args):
    """The layer under `jax.checkpoint` as a pure function of its state. Not `nnx.remat`: it refuses a layer whose
    params come from two traces, as when only some are differentiated (LoRA adapters over a frozen base)."""
    graphdef, state = nnx.split(layer)
    return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a), policy=policy)(state, *args)


class Output(NamedTuple):
    """`logits` [b, t, vocab] for an LM head, per-token scores [b, t, num_labels] for a score head."""

    logits: jax.Array
    cache: KVCache | None


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.param_dtype)
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg, rngs)
        if cfg.head == "score":
            self.score = _param(rngs, (cfg.hidden_size, cfg.num_labels), ("embed", "labels"), cfg.param_dtype)
        elif not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.param_dtype)

    def hidden_states(
        self,
        input_ids: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [b, t, embed]. Positions default to 0..t-1 (after the cache's entries)."""
        cfg = self.config
        batch, length = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            start = cache.lengths[:, None] if cache is not None else 0
            positions = start + jnp.arange(length, dtype=jnp.int32)[None, :]
        if cache is not None:
            offsets = cache.lengths
            kv_positions = write_rows(cache.positions, positions, offsets)
            kv_segments = write_rows(cache.segment_ids, segment_ids, offsets)
        else:
            kv_positions, kv_segments = positions, segment_ids
        mask = make_attention_mask(positions, segment_ids, kv_positions, kv_segments, cfg.sliding_window)

        x = jnp.take(self.embed[...], input_ids, axis=0).astype(cfg.dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        policy = REMAT_POLICIES[cfg.remat]
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            cache_kv = (cache.k[i], cache.v[i]) if cache is not None else None
            offsets_i = cache.lengths if cache is not None else None
            if cfg.remat != "none":
                x, (k, v) = _remat_layer(layer, policy, x, positions, mask, cache_kv, offsets_i)
            else:
                x, (k, v) = layer(x, positions, mask, cache_kv, offsets_i)
            new_k.append(k)
            new_v.append(v)
        x = self.final_norm(x)
        if cache is None:
            return x, None
        new_cache = KVCache(
            k=tuple(new_k),
            v=tuple(new_v),
            positions=kv_positions,
            segment_ids=kv_segments,
            lengths=cache.lengths + length,
        )
        return x, new_cache

    def head(self, hidden: jax.Array) -> jax.Array:
        """LM logits or score-head outputs, computed in float32 whatever the compute dtype."""
        if self.config.head == "score":
            kernel = self.score[...].astype(hidden.dtype)
            return jnp.einsum("bte,el->btl", hidden, kernel, preferred_element_type=jnp.float32)
        kernel = self.embed[...] if self.config.tie_word_embeddings else self.lm_head[...]
        out = jnp.einsum("bte,ve->btv", hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "length", "act_vocab"))

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> Output:
        hidden, cache = self.hidden_states(input_ids, positions, segment_ids, cache)
        return Output(self.head(hidden), cache)


def pool_last_token(per_token: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Pick each row's output at its last non-padding token (segment id != 0): [b, t, n] -> [b, n].

    Matches `*ForSequenceClassification` and InternLM2's reward head, which score the sequence at its last token.
    """
    index = jnp.arange(segment_ids.shape[1])[None, :]
    last = jnp.max(jnp.where(segment_ids != 0, index, -1), axis=1)
    last = jnp.maximum(last, 0)
    return jnp.take_along_axis(per_token, last[:, None, None], axis=1)[:, 0, :]
