"""XLA's own count of a train step's memory (`compiled.memory_analysis()`), compiled from shapes on one device
without running it: what the memory plan (train/memory_plan.py) is checked against."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.parallel.mesh import make_mesh
from sq_jax.train.config import LoraSection, OptimSection
from sq_jax.train.lora import add_adapters, trainable_filter
from sq_jax.train.memory_plan import TrainShape
from sq_jax.train.optim import make_optimizer
from sq_jax.train.step import lm_loss, make_train_step


def compiled_train_bytes(cfg: ModelConfig, shape: TrainShape) -> dict[str, int]:
    """Argument, output, alias and temp bytes of the compiled LM train step, and their peak (args + outputs -
    aliased + temps)."""
    cfg = dataclasses.replace(cfg, param_dtype=shape.param_dtype, remat=shape.remat)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])

    def build():
        model = init_model(cfg, seed=0)
        if shape.lora_rank:
            model = add_adapters(model, LoraSection(rank=shape.lora_rank, targets=shape.lora_targets), None)
        return model

    abstract = nnx.eval_shape(build)
    if shape.lora_rank:
        graphdef, params, frozen = nnx.split(abstract, trainable_filter(abstract), nnx.Param)
    else:
        (graphdef, params), frozen = nnx.split(abstract, nnx.Param), None
    tx, _ = make_optimizer(OptimSection(lr=1e-4, warmup_steps=0), 10)
    opt_state = jax.eval_shape(tx.init, params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = lambda tree: jax.tree.map(lambda _: replicated, tree)  # noqa: E731
    step = make_train_step(graphdef, tx, lm_loss, (shardings(params), shardings(opt_state)), mesh,
                           shardings(frozen) if frozen is not None else None)
    rows = (1, shape.micro_batch, shape.seq_len)
    batch = {k: jax.ShapeDtypeStruct(rows, jnp.int32) for k in ("tokens", "positions", "segment_ids", "loss_mask")}
    args = (params, opt_state, batch) + ((frozen,) if frozen is not None else ())
    stats = step.lower(*args).compile().memory_analysis()
    out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
           "aliased": stats.alias_size_in_bytes, "temps": stats.temp_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temps"]
    return out
