"""The jitted train and eval steps: pure functions of (params, optimizer state, batch), built per task loss.

Gradient accumulation scans over micro-batches adding *sums* of token losses and their counts; one division at
the end makes k micro-batches give exactly the update of one big batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sq_jax.models.transformer import Transformer
from sq_jax.train.losses import masked_cross_entropy_sum, next_token_targets

# loss(model, micro_batch) -> (sum of token losses, number of weighted tokens)
LossFn = Callable[[Transformer, dict[str, jax.Array]], tuple[jax.Array, jax.Array]]


def lm_loss(model: Transformer, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"]).logits
    targets, weights = next_token_targets(batch["tokens"], batch["segment_ids"], batch["loss_mask"])
    return masked_cross_entropy_sum(logits, targets, weights)


def batch_sharding(mesh: Mesh, accumulated: bool) -> NamedSharding:
    """Rows split over data x fsdp; the leading micro-batch axis (when accumulating) is not sharded."""
    rows = ("data", "fsdp")
    return NamedSharding(mesh, PartitionSpec(None, rows) if accumulated else PartitionSpec(rows))


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, shardings: tuple[Any, Any], mesh: Mesh
) -> Callable:
    """step(params, opt_state, batch[accum, micro, len]) -> (params, opt_state, metrics); state donated."""
    param_shardings, opt_shardings = shardings

    def step(params, opt_state, batch):
        def micro_step(carry, micro):
            grads_acc, loss_acc, tokens_acc = carry

            def loss(p):
                return loss_fn(nnx.merge(graphdef, p), micro)

            (loss_sum, tokens), grads = jax.value_and_grad(loss, has_aux=True)(params)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            return (grads_acc, loss_acc + loss_sum, tokens_acc + tokens), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grad_sum, loss_sum, tokens), _ = jax.lax.scan(micro_step, init, batch)
        denom = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "tokens": tokens}
        return new_params, new_opt_state, metrics

    return jax.jit(
        step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding(mesh, accumulated=True)),
        out_shardings=(param_shardings, opt_shardings, None),
        donate_argnums=(0, 1),
    )


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn, param_shardings: Any, mesh: Mesh) -> Callable:
    """eval(params, batch[rows, len]) -> (sum of token losses, tokens)."""

    def step(params, batch):
        return loss_fn(nnx.merge(graphdef, params), batch)

    return jax.jit(step, in_shardings=(param_shardings, batch_sharding(mesh, accumulated=False)))
