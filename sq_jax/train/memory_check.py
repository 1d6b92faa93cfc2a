"""What the memory plan (train/memory_plan.py) is checked against, from shapes on one device without running
anything: XLA's own count of the compiled train step (`compiled.memory_analysis()`) and the residuals JAX's
autodiff saves for its backward (`jax.ad_checkpoint`'s saved residuals), which show what a remat policy keeps
whatever the compiler."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals  # the list print_saved_residuals prints

from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.parallel.mesh import make_mesh
from sq_jax.train.config import LoraSection, OptimSection
from sq_jax.train.lora import add_adapters, trainable_filter
from sq_jax.train.memory_plan import TrainShape
from sq_jax.train.optim import make_optimizer
from sq_jax.train.step import lm_loss, make_train_step


def _abstract_state(cfg: ModelConfig, shape: TrainShape) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, trained params, frozen base or None) of the train step's model, as shapes only."""

    def build():
        model = init_model(cfg, seed=0)
        if shape.lora_rank:
            model = add_adapters(model, LoraSection(rank=shape.lora_rank, targets=shape.lora_targets), None)
        return model

    abstract = nnx.eval_shape(build)
    if shape.lora_rank:
        return nnx.split(abstract, trainable_filter(abstract), nnx.Param)
    return (*nnx.split(abstract, nnx.Param), None)


def _batch(rows: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.int32) for k in ("tokens", "positions", "segment_ids",
                                                                         "loss_mask")}


def compiled_train_bytes(cfg: ModelConfig, shape: TrainShape) -> dict[str, int]:
    """Argument, output, alias and temp bytes of the compiled LM train step, and their peak (args + outputs -
    aliased + temps)."""
    cfg = dataclasses.replace(cfg, param_dtype=shape.param_dtype, remat=shape.remat)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    graphdef, params, frozen = _abstract_state(cfg, shape)
    tx, _ = make_optimizer(OptimSection(lr=1e-4, warmup_steps=0), 10)
    opt_state = jax.eval_shape(tx.init, params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = lambda tree: jax.tree.map(lambda _: replicated, tree)  # noqa: E731
    step = make_train_step(graphdef, tx, lm_loss, (shardings(params), shardings(opt_state)), mesh,
                           shardings(frozen) if frozen is not None else None)
    batch = {k: v.update(shape=(1, *v.shape)) for k, v in _batch(shape.micro_batch, shape.seq_len).items()}
    args = (params, opt_state, batch) + ((frozen,) if frozen is not None else ())
    stats = step.lower(*args).compile().memory_analysis()
    out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
           "aliased": stats.alias_size_in_bytes, "temps": stats.temp_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temps"]
    return out


def saved_residual_bytes(cfg: ModelConfig, shape: TrainShape) -> dict[str, int]:
    """Bytes of the residuals JAX's autodiff saves for the backward of the LM loss (the train step's) under
    `shape.remat`, traced from shapes: "activations", the part that grows with the rows, and "fixed", the rest
    (compute-dtype casts of the weights). The arguments (weights, batch) are not counted: the plan has them.

    What the compiled step keeps can be less (XLA may fuse and recompute cheap elementwise residuals) and its
    temps come on top; this is the compiler-independent count of what the remat policy leaves to the backward."""
    cfg = dataclasses.replace(cfg, param_dtype=shape.param_dtype, remat=shape.remat)
    graphdef, params, frozen = _abstract_state(cfg, shape)
    frozen_args = (frozen,) if frozen is not None else ()

    def loss(trained, base, batch):
        return lm_loss(nnx.merge(graphdef, trained, *base), batch)[0]

    def residuals(rows: int) -> int:
        # jax.ad_checkpoint only prints these (print_saved_residuals); the list behind it is what we need.
        listed = saved_residuals(loss, params, frozen_args, _batch(rows, shape.seq_len))
        return sum(aval.size * aval.dtype.itemsize for aval, source in listed
                   if not source.startswith(("from the argument", "from a constant")))

    one, two = residuals(shape.micro_batch), residuals(2 * shape.micro_batch)
    return {"activations": two - one, "fixed": 2 * one - two}
