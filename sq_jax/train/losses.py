"""Pure losses. Everything returns sums plus the count they are over, so micro-batches and hosts can be added
up exactly and divided once (a mean of means would weight short batches wrongly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_targets(
    tokens: jax.Array, segment_ids: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Targets and weights for predicting token t+1 at position t, never across a segment boundary.

    The weight is the loss mask of the *predicted* token, zero where t+1 starts another example or is padding.
    """
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    next_segment = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
    next_mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    same = (next_segment == segment_ids) & (next_segment != 0)
    return targets, (next_mask * same).astype(jnp.float32)


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood [b, t], in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def masked_cross_entropy_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted token losses, sum of weights)."""
    losses = token_cross_entropy(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)
