"""Logical axis names -> mesh axes. The one place that decides how params and activations are laid out.

Model code names axes (`embed`, `heads`, ...); this table maps them onto the mesh (`data`, `fsdp`, `tensor`).
A name mapped to None is replicated. Changing the layout of a whole model means changing this table only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

DEFAULT_RULES: dict[str, MeshAxes] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "labels": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # kv cache
    "cache_batch": ("data", "fsdp"),
    "cache_length": None,
}


class ShardingError(ValueError):
    """A parameter or activation that the mesh cannot shard as the rules say."""


def logical_to_spec(names: Sequence[str | None], rules: Mapping[str, MeshAxes] | None = None) -> PartitionSpec:
    rules = DEFAULT_RULES if rules is None else rules
    axes = []
    for name in names:
        if name is None:
            axes.append(None)
            continue
        if name not in rules:
            raise ShardingError(f"logical axis {name!r} has no sharding rule; known: {', '.join(sorted(rules))}")
        axes.append(rules[name])
    return PartitionSpec(*axes)


def _axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def named_sharding(
    mesh: Mesh,
    names: Sequence[str | None],
    shape: Sequence[int],
    *,
    what: str = "array",
    rules: Mapping[str, MeshAxes] | None = None,
) -> NamedSharding:
    """The sharding for an array of `shape` with logical `names`; an axis the mesh cannot divide is an error."""
    spec = logical_to_spec(names, rules)
    for dim, (size, axes, name) in enumerate(zip(shape, spec, names)):
        parts = _axis_size(mesh, axes)
        if size % parts:
            raise ShardingError(
                f"{what}: dimension {dim} ({name}, size {size}) is not divisible by mesh axes {axes} "
                f"(size {parts}); mesh shape {dict(mesh.shape)}. Pick a mesh whose {axes} size divides {size}."
            )
    return NamedSharding(mesh, spec)


def constrain(x: jax.Array, names: Sequence[str | None], rules: Mapping[str, MeshAxes] | None = None) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh (`jax.set_mesh`); a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(names, rules)
    # Skip axes the current mesh cannot divide (e.g. a batch of 1 while decoding) instead of failing to compile.
    fixed = tuple(
        axes if size % _abstract_axis_size(mesh, axes) == 0 else None for size, axes in zip(x.shape, spec)
    )
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*fixed))


def _abstract_axis_size(mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size
