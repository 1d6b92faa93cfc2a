"""Randomly initialised models, created directly in their sharded layout (no full copy on one device), and the
per-param shardings that loading a checkpoint (`hf_io`, `checkpoint`) places its tensors by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from sq_jax.models.config import ModelConfig
from sq_jax.models.transformer import Transformer
from sq_jax.parallel.sharding import MeshAxes, named_sharding

ParamPath = tuple[Any, ...]


def param_shardings(
    model_or_abstract: nnx.Module, mesh: Mesh | None, rules: Mapping[str, MeshAxes] | None = None
) -> dict[ParamPath, Any]:
    """Path -> NamedSharding (None without a mesh) for every param, from its logical axes."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model_or_abstract, nnx.Param)):
        shape = var.get_value().shape
        if mesh is None:
            out[path] = None
            continue
        names = var.get_metadata().get("logical_axes") or (None,) * len(shape)
        out[path] = named_sharding(mesh, names, shape, what="/".join(map(str, path)), rules=rules)
    return out


def init_model(
    cfg: ModelConfig, *, mesh: Mesh | None = None, rules: Mapping[str, MeshAxes] | None = None, seed: int = 0
) -> Transformer:
    """A fresh `Transformer` from `seed`; on a mesh every param is born sharded by its logical axes."""

    def create() -> Transformer:
        return Transformer(cfg, rngs=nnx.Rngs(seed))

    if mesh is None:
        return create()
    abstract = nnx.eval_shape(create)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract, mesh, rules)
    flat = nnx.to_flat_state(abstract_state)
    out_shardings = nnx.from_flat_state([(path, shardings.get(path)) for path, _ in flat])
    state = jax.jit(lambda: nnx.state(create()), out_shardings=out_shardings)()
    return nnx.merge(graphdef, state)
