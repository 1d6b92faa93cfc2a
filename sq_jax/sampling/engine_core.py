"""The device side of the sampling engine: prefix and decode-state pytrees and the pure functions over them.

A slot's pending token is sampled from logits already computed (by prefill or the previous step) with the
request's own key folded with the token index, so a sample never depends on its slot or on scheduling.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from sq_jax.models.kv_cache import KVCache, init_cache
from sq_jax.models.transformer import Transformer
from sq_jax.sampling.sampling import greedy_token, sample_token, token_key


@struct.dataclass
class Prefix:
    """One prefilled request: its KV entries (a length bucket), logits after its last token, its settings."""

    k: tuple[jax.Array, ...]  # per layer [kv_heads, bucket, head_dim]
    v: tuple[jax.Array, ...]  # per layer [kv_heads, head_dim, bucket]
    positions: jax.Array  # [bucket] int32
    segment_ids: jax.Array  # [bucket] int32, 0 past the true length
    length: jax.Array  # () int32: true tokens = next write offset
    logits: jax.Array  # [vocab] float32
    key: jax.Array  # uint32[2]
    temperature: jax.Array  # () float32
    top_p: jax.Array
    top_k: jax.Array  # () int32
    max_tokens: jax.Array  # () int32


@struct.dataclass
class DecodeState:
    cache: KVCache  # per layer k [slots, kv_heads, max_len, head_dim], v [slots, kv_heads, head_dim, max_len]
    tokens: jax.Array  # [slots] pending token (sampled, not yet emitted)
    generated: jax.Array  # [slots] tokens emitted so far
    active: jax.Array  # [slots] bool
    keys: jax.Array  # [slots, 2] uint32
    temperature: jax.Array  # [slots] float32
    top_p: jax.Array
    top_k: jax.Array  # [slots] int32
    max_tokens: jax.Array  # [slots] int32
    logprobs: jax.Array  # [slots] float32: log-probability of the pending token under the model


def token_logprob(logits: jax.Array, token: jax.Array) -> jax.Array:
    """log p(token) under the model's own distribution (before temperature, top-k, top-p: vLLM's default), from
    logits [..., vocab] and token ids [...]; one logsumexp, no [vocab] log-softmax kept."""
    logits = logits.astype(jnp.float32)
    chosen = jnp.take_along_axis(logits, token[..., None], axis=-1)[..., 0]
    return chosen - jax.nn.logsumexp(logits, axis=-1)


def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,
    true_length: jax.Array,
    existing: Prefix | None,
    settings: dict[str, jax.Array],
) -> Prefix:
    """Run `tokens` [bucket] (after `existing`, if any) and return the request's prefix."""
    model: Transformer = nnx.merge(graphdef, params)
    bucket = tokens.shape[0]
    valid = (jnp.arange(bucket) < true_length).astype(jnp.int32)
    if existing is None:
        start = jnp.zeros((), jnp.int32)
        cache = init_cache(model.config, 1, bucket)
    else:
        start = existing.length
        k_pad, v_pad = [(0, 0), (0, bucket), (0, 0)], [(0, 0), (0, 0), (0, bucket)]
        cache = KVCache(
            k=tuple(jnp.pad(x, k_pad)[None] for x in existing.k), v=tuple(jnp.pad(x, v_pad)[None] for x in existing.v),
            positions=jnp.pad(existing.positions, (0, bucket))[None],
            segment_ids=jnp.pad(existing.segment_ids, (0, bucket))[None],
            lengths=existing.length[None],
        )
    positions = start + jnp.arange(bucket, dtype=jnp.int32)
    hidden, new = model.hidden_states(tokens[None], positions[None], valid[None], cache)
    last = jax.lax.dynamic_slice_in_dim(hidden, true_length - 1, 1, axis=1)
    return Prefix(
        k=tuple(x[0] for x in new.k), v=tuple(x[0] for x in new.v), positions=new.positions[0], segment_ids=new.segment_ids[0],
        length=start + true_length, logits=model.head(last)[0, 0], **settings,
    )


def _pad_length(x: jax.Array, axis: int, length: int) -> jax.Array:
    """`x` zero-padded along `axis` to `length`."""
    return jnp.pad(x, [(0, length - x.shape[axis]) if a == axis else (0, 0) for a in range(x.ndim)])


def with_settings(prefix: Prefix, settings: dict[str, jax.Array]) -> Prefix:
    """The same prefilled KV under another request's key and sampling settings (prefix reuse)."""
    return prefix.replace(**settings)


def insert(prefix: Prefix, state: DecodeState, slot: jax.Array) -> DecodeState:
    """Copy a prefix into `slot`, overwriting all of what its previous request left, and sample its first token."""
    cache = state.cache
    bucket = prefix.positions.shape[0]
    max_len = cache.max_length
    # The whole row, zeros past the bucket: masked entries still enter attention as 0 x value, so a NaN left by
    # an earlier occupant would poison every later request in this slot.
    put_rows = lambda buf, new: jax.lax.dynamic_update_slice(buf, new[None].astype(buf.dtype), (slot, 0, 0, 0))  # noqa: E731
    k = tuple(put_rows(buf, _pad_length(new, 1, max_len)) for buf, new in zip(cache.k, prefix.k))
    v = tuple(put_rows(buf, _pad_length(new, 2, max_len)) for buf, new in zip(cache.v, prefix.v))
    row = lambda x: jnp.pad(x, (0, max_len - bucket))[None]  # noqa: E731
    positions = jax.lax.dynamic_update_slice(cache.positions, row(prefix.positions), (slot, 0))
    segments = jax.lax.dynamic_update_slice(cache.segment_ids, row(prefix.segment_ids), (slot, 0))
    first = sample_token(prefix.logits, token_key(prefix.key, 0), prefix.temperature, prefix.top_p, prefix.top_k)
    put = lambda arr, value: arr.at[slot].set(value)  # noqa: E731
    return DecodeState(
        cache=KVCache(k=k, v=v, positions=positions, segment_ids=segments,
                      lengths=put(cache.lengths, prefix.length)),
        tokens=put(state.tokens, first),
        generated=put(state.generated, 0),
        active=put(state.active, True),
        keys=put(state.keys, prefix.key),
        temperature=put(state.temperature, prefix.temperature),
        top_p=put(state.top_p, prefix.top_p),
        top_k=put(state.top_k, prefix.top_k),
        max_tokens=put(state.max_tokens, prefix.max_tokens),
        logprobs=put(state.logprobs, token_logprob(prefix.logits, first)),
    )


def generate(
    graphdef: nnx.GraphDef, params: nnx.State, state: DecodeState, stop_ids: jax.Array, steps: int,
    sampling: bool = True, restore: Callable[[nnx.State], nnx.State] | None = None,
) -> tuple[DecodeState, jax.Array]:
    """`steps` decode steps for every slot. Returns the new state and [slots, 3 * steps + 1] int32 results:
    emitted tokens, their validity, each slot's count of emitted tokens at the block's first token (JetStream's
    ResultTokens layout, which reads only these), then the emitted tokens' log-probabilities (float32 bits).

    `sampling=False` (static) compiles a greedy-only block, valid when every slot has temperature 0. The choice
    is the caller's (the host knows every request's settings) rather than a `lax.cond` in the step: on GPU a
    conditional copies its predicate to the host and blocks the stream, once per decoded token.

    `restore` maps the params as passed to the model's (`decode_weights.restore`); it is traced inside the step,
    where XLA folds it into the products that read the weights, not before the loop, where it would copy them.
    """
    first_count = state.generated + 1

    def one_step(state: DecodeState, _):
        model: Transformer = nnx.merge(graphdef, restore(params) if restore is not None else params)
        cache = state.cache
        emit, emit_logprob = state.tokens, state.logprobs
        room = cache.lengths < cache.max_length
        valid = state.active & (state.generated < state.max_tokens) & room
        out = model(emit[:, None], cache.lengths[:, None], jnp.ones_like(emit)[:, None], cache)
        logits = out.logits[:, -1]

        if sampling:
            keys = jax.vmap(token_key)(state.keys, state.generated + 1)
            nxt = jax.vmap(sample_token)(logits, keys, state.temperature, state.top_p, state.top_k)
        else:  # an all-greedy batch skips the sort-based filters entirely
            nxt = greedy_token(logits)
        stopped = jnp.isin(emit, stop_ids)
        generated = state.generated + valid.astype(jnp.int32)
        new_cache = out.cache.replace(lengths=jnp.where(valid, out.cache.lengths, cache.lengths))
        new_state = state.replace(
            cache=new_cache,
            tokens=jnp.where(valid, nxt, state.tokens),
            generated=generated,
            active=valid & ~stopped & (generated < state.max_tokens),
            logprobs=jnp.where(valid, token_logprob(logits, nxt), state.logprobs),
        )
        return new_state, (emit, valid.astype(jnp.int32), emit_logprob)

    state, (tokens, valid, logprobs) = jax.lax.scan(one_step, state, None, length=steps)
    logprob_bits = jax.lax.bitcast_convert_type(logprobs.T.astype(jnp.float32), jnp.int32)
    result = jnp.concatenate([tokens.T, valid.T, first_count[:, None], logprob_bits], axis=1).astype(jnp.int32)
    return state, result


def result_logprobs(result: np.ndarray, steps: int) -> np.ndarray:
    """The [slots, steps] float32 log-probabilities of a decode block's emitted tokens, from its host results."""
    return result[:, 2 * steps + 1: 3 * steps + 1].view(np.float32)


@struct.dataclass
class PrefixBatch:
    """Several prompts prefilled in one call (rows padded to a power of two, prompts to one bucket)."""

    k: tuple[jax.Array, ...]  # per layer [rows, kv_heads, bucket, head_dim]; v [rows, kv_heads, head_dim, bucket]
    v: tuple[jax.Array, ...]
    positions: jax.Array  # [rows, bucket]
    segment_ids: jax.Array  # [rows, bucket]
    lengths: jax.Array  # [rows]
    logits: jax.Array  # [rows, vocab]


def prefill_batch(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, true_lengths: jax.Array) -> PrefixBatch:
    """Prefill `tokens` [rows, bucket] (each row its own prompt) in one forward pass."""
    model: Transformer = nnx.merge(graphdef, params)
    rows, bucket = tokens.shape
    cfg = model.config
    segments = (jnp.arange(bucket)[None, :] < true_lengths[:, None]).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (rows, bucket))
    hidden, cache = model.hidden_states(tokens, positions, segments, init_cache(cfg, rows, bucket))
    last = jnp.take_along_axis(hidden, jnp.maximum(true_lengths - 1, 0)[:, None, None], axis=1)
    return PrefixBatch(k=cache.k, v=cache.v, positions=cache.positions,
                       segment_ids=cache.segment_ids, lengths=true_lengths, logits=model.head(last)[:, 0])


def row_of(batch: PrefixBatch, row: jax.Array, settings: dict[str, jax.Array]) -> Prefix:
    """One request's prefix out of a batch (traced: no host round trip)."""
    take = lambda x: jax.lax.dynamic_index_in_dim(x, row, keepdims=False)  # noqa: E731
    return Prefix(k=tuple(take(x) for x in batch.k), v=tuple(take(x) for x in batch.v),
                  positions=take(batch.positions), segment_ids=take(batch.segment_ids), length=take(batch.lengths),
                  logits=take(batch.logits), **settings)


def insert_batch(
    batch: PrefixBatch, state: DecodeState, rows: jax.Array, slots: jax.Array, settings: dict[str, jax.Array],
    count: jax.Array,
) -> DecodeState:
    """Insert `count` requests at once: request i takes prompt row `rows[i]` into `slots[i]` with settings[..][i].

    One scatter per buffer (entries past `count` are dropped), not a loop of per-slot copies of the cache.
    """
    cache = state.cache
    bucket, max_len = batch.positions.shape[1], cache.max_length
    target = jnp.where(jnp.arange(slots.shape[0]) < count, slots, state.tokens.shape[0])  # out of range: dropped
    put = lambda buf, values: buf.at[target].set(values.astype(buf.dtype), mode="drop")  # noqa: E731
    # Whole rows (zeros past the bucket), as in `insert`: nothing of a slot's previous request survives.
    put_k = lambda buf, new: put(buf, _pad_length(new[rows], 2, max_len))  # noqa: E731
    put_v = lambda buf, new: put(buf, _pad_length(new[rows], 3, max_len))  # noqa: E731
    pad_row = lambda x: jnp.pad(x[rows], ((0, 0), (0, max_len - bucket)))  # noqa: E731
    keys = jax.vmap(token_key)(settings["key"], jnp.zeros_like(rows))
    first = jax.vmap(sample_token)(batch.logits[rows], keys, settings["temperature"], settings["top_p"],
                                   settings["top_k"])
    return DecodeState(
        cache=KVCache(k=tuple(put_k(b, n) for b, n in zip(cache.k, batch.k)),
                      v=tuple(put_v(b, n) for b, n in zip(cache.v, batch.v)),
                      positions=put(cache.positions, pad_row(batch.positions)),
                      segment_ids=put(cache.segment_ids, pad_row(batch.segment_ids)),
                      lengths=put(cache.lengths, batch.lengths[rows])),
        tokens=put(state.tokens, first),
        generated=put(state.generated, jnp.zeros_like(rows)),
        active=put(state.active, jnp.ones_like(rows, bool)),
        keys=put(state.keys, settings["key"]),
        temperature=put(state.temperature, settings["temperature"]),
        top_p=put(state.top_p, settings["top_p"]),
        top_k=put(state.top_k, settings["top_k"]),
        max_tokens=put(state.max_tokens, settings["max_tokens"]),
        logprobs=put(state.logprobs, token_logprob(batch.logits[rows], first)),
    )
