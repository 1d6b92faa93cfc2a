"""The jitted train and eval steps: pure functions of (params, optimizer state, batch), built per task loss.

Gradient accumulation scans over micro-batches adding *sums* of losses and statistics and their `count`
(weighted tokens for language modelling, pairs for preference losses); one division at the end makes k
micro-batches give exactly the update of one big batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sq_jax.models.transformer import Transformer
from sq_jax.train.lora import enable_dropout
from sq_jax.train.losses import masked_cross_entropy_sum, next_token_targets

# loss(model, micro_batch) -> (sum of losses, sums of statistics); the statistics hold "count" (what the loss
# is a mean over) and "tokens" (real tokens processed, for throughput), and any other sums to report as means.
LossFn = Callable[[Transformer, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def lm_loss(model: Transformer, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"]).logits
    targets, weights = next_token_targets(batch["tokens"], batch["segment_ids"], batch["loss_mask"])
    loss_sum, tokens = masked_cross_entropy_sum(logits, targets, weights)
    return loss_sum, {"count": tokens, "tokens": tokens}


def means(sums: dict[str, Any]) -> dict[str, Any]:
    """Statistics sums -> means over "count"; "count" and "tokens" stay totals."""
    denom = jnp.maximum(sums["count"], 1.0)
    return {k: v if k in ("count", "tokens") else v / denom for k, v in sums.items()}


def batch_sharding(mesh: Mesh, accumulated: bool) -> NamedSharding:
    """Rows split over data x fsdp; the leading micro-batch axis (when accumulating) is not sharded."""
    rows = ("data", "fsdp")
    return NamedSharding(mesh, PartitionSpec(None, rows) if accumulated else PartitionSpec(rows))


_DROPOUT_STREAM = 0x64726F70  # folded into the run seed so dropout keys differ from the adapters' init keys


def dropout_key(seed: int, step_number: jax.Array, micro_index: jax.Array) -> jax.Array:
    """The adapter-dropout key of one micro-batch: a function of the run seed and the step only (a resumed run
    draws the same masks)."""
    root = jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM)
    return jax.random.fold_in(jax.random.fold_in(root, step_number), micro_index)


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, shardings: tuple[Any, Any], mesh: Mesh,
    frozen_shardings: Any = None, dropout_seed: int | None = None,
) -> Callable:
    """step(params, opt_state, batch[accum, micro, len], step_number=0) -> (params, opt_state, metrics); state
    donated.

    With `frozen_shardings` (LoRA: the base weights) the step takes a fourth argument, the frozen state: merged
    into the model, never differentiated, never donated. With `dropout_seed` the adapters drop out (train/lora.py)
    with keys from the seed and `step_number`, the 0-based index of the step."""
    param_shardings, opt_shardings = shardings

    def loss(p, frozen, micro, key):
        model = nnx.merge(graphdef, p, *frozen)
        if key is not None:
            enable_dropout(model, key)
        loss_sum, stats = loss_fn(model, micro)
        return loss_sum, {"loss": loss_sum, **stats}

    def step(params, opt_state, batch, frozen, step_number):
        def key(micro_index):
            return None if dropout_seed is None else dropout_key(dropout_seed, step_number, micro_index)

        def micro_step(carry, indexed):
            (grads_acc, sums_acc), (micro_index, micro) = carry, indexed
            (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(params, frozen, micro, key(micro_index))
            return (jax.tree.map(jnp.add, grads_acc, grads), jax.tree.map(jnp.add, sums_acc, sums)), None

        first = jax.tree.map(lambda x: x[0], batch)
        sums_shape = jax.eval_shape(loss, params, frozen, first, key(0))[1]
        init = (jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
        micro_indices = jnp.arange(jax.tree.leaves(batch)[0].shape[0])
        (grad_sum, sums), _ = jax.lax.scan(micro_step, init, (micro_indices, batch))
        denom = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return new_params, new_opt_state, {**means(sums), "grad_norm": optax.global_norm(grads)}

    jitted = jax.jit(
        step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding(mesh, accumulated=True),
                      (frozen_shardings,) if frozen_shardings is not None else (),
                      NamedSharding(mesh, PartitionSpec())),
        out_shardings=(param_shardings, opt_shardings, None),
        donate_argnums=(0, 1),
    )
    stepped = _frozen_last(jitted, frozen_shardings is not None, extra=1)

    def train_step(*args, step_number: int = 0):
        return stepped(*args, np.int32(step_number))

    train_step.lower = lambda *args, step_number=0: stepped.lower(*args, np.int32(step_number))
    return train_step


def _frozen_last(jitted: Any, has_frozen: bool, extra: int = 0) -> Callable:
    """The jitted step called as step(*args[, frozen], *extra); its `lower` too (the memory plan compiles the
    step). The last `extra` arguments come after the frozen state."""

    def pack(args: tuple) -> tuple:
        head, tail = (args[:-extra], args[-extra:]) if extra else (args, ())
        packed = (*head[:-1], (head[-1],)) if has_frozen else (*head, ())
        return (*packed, *tail)

    def step(*args):
        return jitted(*pack(args))

    step.lower = lambda *args: jitted.lower(*pack(args))
    return step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn, param_shardings: Any, mesh: Mesh,
                   frozen_shardings: Any = None) -> Callable:
    """eval(params, batch[rows, len]) -> sums of the loss ("loss") and of the task's statistics (a third argument,
    the frozen state, with `frozen_shardings`)."""

    def step(params, batch, frozen):
        loss_sum, stats = loss_fn(nnx.merge(graphdef, params, *frozen), batch)
        return {"loss": loss_sum, **stats}

    jitted = jax.jit(step, in_shardings=(param_shardings, batch_sharding(mesh, accumulated=False),
                                         (frozen_shardings,) if frozen_shardings is not None else ()))
    return _frozen_last(jitted, frozen_shardings is not None)
