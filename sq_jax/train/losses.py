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


def completion_logps(
    logits: jax.Array, tokens: jax.Array, segment_ids: jax.Array, loss_mask: jax.Array, num_segments: int
) -> jax.Array:
    """Summed log-probability of each segment's loss-masked tokens given what precedes them: [b, num_segments].

    Column s holds segment id s + 1; a segment absent from a row sums to 0. Padding, prompt tokens and the
    prediction across a segment boundary carry no weight, so rows may pack several sequences.
    """
    targets, weights = next_token_targets(tokens, segment_ids, loss_mask)
    token_logps = -token_cross_entropy(logits, targets) * weights
    # A one-hot contraction rather than segment_sum: static shapes, sharding-friendly, and cheap for a few
    # dozen segments next to the vocabulary projection.
    one_hot = (segment_ids[..., None] == jnp.arange(1, num_segments + 1)).astype(jnp.float32)
    return jnp.einsum("bt,bts->bs", token_logps, one_hot)


PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge")


def preference_losses(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-pair DPO-family losses and per-pair metrics from summed completion log-probs (any matching shape).

    sigmoid (DPO, Rafailov et al.; conservative DPO when label_smoothing > 0), IPO (Azar et al.: squared
    distance of the log-ratio margin from 1 / (2 beta)) and hinge (SLiC: relu(1 - beta * margin)).
    `reference_free` compares the policy against a uniform reference (reference log-probs taken as 0).
    Implicit rewards are beta * (policy - reference) log-prob of each side.
    """
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {loss_type!r}; choose from {', '.join(PREFERENCE_LOSSES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing only applies to the sigmoid loss, not {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if reference_free:
        ref_chosen, ref_rejected = jnp.zeros_like(ref_chosen), jnp.zeros_like(ref_rejected)
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    margin = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = (-jax.nn.log_sigmoid(beta * margin) * (1.0 - label_smoothing)
                  - jax.nn.log_sigmoid(-beta * margin) * label_smoothing)
    elif loss_type == "ipo":
        losses = (margin - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = jax.nn.relu(1.0 - beta * margin)
    chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
    metrics = {
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "reward_accuracy": (chosen_reward > rejected_reward).astype(jnp.float32),
        "reward_margin": chosen_reward - rejected_reward,
        "policy_chosen_logp": policy_chosen,
        "policy_rejected_logp": policy_rejected,
        "reference_chosen_logp": ref_chosen,
        "reference_rejected_logp": ref_rejected,
    }
    return losses, metrics


def segment_last_values(per_token: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Each segment's value at its last token: [b, t] -> [b, num_segments] (column s is segment id s + 1; 0 where
    absent). A score head reads a sequence at its last token, as `*ForSequenceClassification` does."""
    next_segment = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
    is_last = (segment_ids != next_segment) & (segment_ids != 0)
    one_hot = (segment_ids[..., None] == jnp.arange(1, num_segments + 1)) & is_last[..., None]
    return jnp.einsum("bt,bts->bs", per_token.astype(jnp.float32), one_hot.astype(jnp.float32))
