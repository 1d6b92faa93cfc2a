"""Randomly initialised models, created directly in their sharded layout (no full copy on one device)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
from flax import nnx
from jax.sharding import Mesh

from sq_jax.models.config import ModelConfig
from sq_jax.models.transformer import Transformer
from sq_jax.parallel.sharding import MeshAxes


def init_model(
    cfg: ModelConfig, *, mesh: Mesh | None = None, rules: Mapping[str, MeshAxes] | None = None, seed: int = 0
) -> Transformer:
    """A fresh `Transformer` from `seed`; on a mesh every param is born sharded by its logical axes."""
    from sq_jax.models.hf_io import param_shardings

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
