"""Scalar scoring with a score-head model (the difficulty scorer, the reward model): sequences packed several to a
row with segment ids (positions restart per sequence, attention stays inside it), one jitted forward for one row
shape, each sequence read at its pooling token.

Packing rather than one padded sequence a row: reward inputs run from ~100 to 4096 tokens, so a padded row of a
7B forward pass would be mostly padding; packed, most of its tokens are real.

The pooling token is part of the scorer: a model whose config.json has `reward_token_id` (internlm2-7b-reward's
`get_score` appends token 92527 and reads `v_head` there) gets that token appended to every sequence and is read
at it; any other is read at its last token, as `*ForSequenceClassification` reads its last non-pad token."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sq_jax.data.packing import plan_packing
from sq_jax.models.checkpoint import load_model
from sq_jax.models.transformer import Transformer
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


def pack_plan(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Rows of sequence indices, each row's lengths summing to <= `width`: longest first, first fit (the same
    input always gives the same rows, so a rerun scores exactly the same batches)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return plan_packing(lengths, order, width, open_bins=64)


@functools.partial(jax.jit, static_argnums=0)  # one compile per model structure and row shape, for every scorer
def _forward(graphdef: Any, state: Any, tokens: jax.Array, positions: jax.Array, segments: jax.Array) -> jax.Array:
    # Params as an argument: a closure would bake 7B weights into the HLO.
    out = nnx.merge(graphdef, state)(tokens, positions, segments).logits
    return out[..., 0].astype(jnp.float32)


class PackedScorer:
    """Scores token sequences packed `rows` x `width` per forward call (one compile for the stage)."""

    def __init__(self, model: Transformer, *, rows: int = 32, width: int = 512, max_length: int | None = None):
        if max_length is not None and max_length > width:
            raise ValueError(f"max_length={max_length} is longer than a packed row (width {width})")
        devices = jax.local_device_count()
        self.rows = -(-rows // devices) * devices  # rows shard over every local device
        self.width, self.max_length = width, max_length or width
        self.reward_token_id = model.config.reward_token_id
        self._graphdef, self._state = nnx.split(model)

    def __call__(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """The first label's score of each sequence (cut on the left to `max_length`), in input order."""
        if not sequences:
            return np.zeros(0, np.float32)
        if any(len(s) == 0 for s in sequences):
            raise ValueError("cannot score an empty sequence")
        seqs = [np.asarray(pooled_sequence(s, self.reward_token_id, self.max_length), np.int32) for s in sequences]
        plan = pack_plan([len(s) for s in seqs], self.width)
        out = np.zeros(len(seqs), np.float32)
        for start in range(0, len(plan), self.rows):
            batch = plan[start : start + self.rows]
            tokens = np.zeros((self.rows, self.width), np.int32)
            positions = np.zeros_like(tokens)
            segments = np.zeros_like(tokens)
            reads: list[tuple[int, int, int]] = []  # (sequence, row, column of its pooling token)
            for row, members in enumerate(batch):
                offset = 0
                for segment, i in enumerate(members, start=1):
                    n = len(seqs[i])
                    tokens[row, offset : offset + n] = seqs[i]
                    positions[row, offset : offset + n] = np.arange(n)
                    segments[row, offset : offset + n] = segment
                    reads.append((i, row, offset + n - 1))
                    offset += n
            per_token = np.asarray(_forward(self._graphdef, self._state, tokens, positions, segments))
            index = np.asarray(reads)
            out[index[:, 0]] = per_token[index[:, 1], index[:, 2]]
        return out


def score_sequences(model: Transformer, sequences: Sequence[Sequence[int]], *, batch_size: int = 32,
                    max_length: int | None = None, width: int | None = None) -> np.ndarray:
    """Score sequences with a one-off `PackedScorer` (rows of `width`, default the longest pooled sequence)."""
    if not sequences:
        return np.zeros(0, np.float32)
    extra = model.config.reward_token_id is not None
    longest = max(len(s) for s in sequences) + extra
    width = width or -(-min(longest, max_length or longest) // 64) * 64
    return PackedScorer(model, rows=batch_size, width=width, max_length=max_length)(sequences)


def describe(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
