"""Batched scalar scoring with a score-head model (the difficulty scorer, the reward model): sequences sorted by
length into padded buckets, one jitted forward per bucket shape, each read at its pooling token.

The pooling token is part of the scorer: a model whose config.json has `reward_token_id` (internlm2-7b-reward's
`get_score` appends token 92527 and reads `v_head` there) gets that token appended to every sequence and is read
at it; any other is read at its last token, as `*ForSequenceClassification` reads its last non-pad token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sq_jax.models.checkpoint import load_model
from sq_jax.models.transformer import Transformer, pool_last_token
from sq_jax.parallel.mesh import make_mesh


def load_scorer(path: str, *, head: str | None = None, dtype: str = "bfloat16", mesh_tensor: int = 1) -> Transformer:
    """A score-head model on all local devices (fsdp over the rest); `head="score"` puts a fresh scalar head on
    a causal LM (useful only for smoke runs: an untrained head scores noise)."""
    mesh = make_mesh(1, -1, mesh_tensor, devices=jax.local_devices())  # the process that scores owns them
    model = load_model(path, mesh=mesh, dtype=dtype, param_dtype=dtype, **({"head": head} if head else {}))
    if model.config.head != "score":
        raise ValueError(f"{path} is a causal LM, not a scorer; give head: score to add a fresh scalar head")
    return model


def pooled_sequence(tokens: Sequence[int], reward_token_id: int | None, max_length: int | None) -> list[int]:
    """The ids a scorer reads: `tokens` cut on the left to fit `max_length`, then the pooling token if it has one."""
    tokens = list(tokens)
    if reward_token_id is None:
        return tokens[-max_length:] if max_length else tokens
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for the scored text and the reward token")
    return (tokens[-(max_length - 1):] if max_length else tokens) + [int(reward_token_id)]


def score_sequences(model: Transformer, sequences: Sequence[Sequence[int]], *, batch_size: int = 32,
                    bucket: int = 64, max_length: int | None = None) -> np.ndarray:
    """The first label's score of each token sequence (truncated on the left to `max_length`), in input order,
    read at the model's pooling token (see the module docstring)."""
    if not sequences:
        return np.zeros(0, np.float32)
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot score an empty sequence")
    rows = jax.local_device_count()
    batch_size = -(-batch_size // rows) * rows  # rows shard over every device
    seqs = [pooled_sequence(s, model.config.reward_token_id, max_length) for s in sequences]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, segments):  # params as an argument: a closure would bake 7B weights into the HLO
        return pool_last_token(nnx.merge(graphdef, state)(tokens, None, segments).logits, segments)

    out = np.zeros(len(seqs), np.float32)
    for start in range(0, len(seqs), batch_size):
        idx = order[start : start + batch_size]
        width = -(-max(len(seqs[i]) for i in idx) // bucket) * bucket
        tokens = np.zeros((batch_size, width), np.int32)
        segments = np.zeros((batch_size, width), np.int32)
        for row, i in enumerate(idx):
            tokens[row, : len(seqs[i])] = seqs[i]
            segments[row, : len(seqs[i])] = 1
        scores = forward(state, jnp.asarray(tokens), jnp.asarray(segments))
        out[idx] = np.asarray(scores[: len(idx), 0], np.float32)
    return out


def describe(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
