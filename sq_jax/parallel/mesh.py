"""The device mesh: axes `data`, `fsdp`, `tensor`, sized from config (`-1` fills the remaining devices)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replace one `-1` by what is left of `num_devices`; the product must equal the device count."""
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if sum(1 for s in shape if s == -1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)}: {num_devices} devices are not divisible by {known}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, shape))} uses {math.prod(shape)} devices but {num_devices} are present"
        )
    return tuple(shape)


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over `devices` (default: all) laid out so `tensor` is the fastest-varying (most local) axis."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape((data, fsdp, tensor), len(devices))
    # Auto axes: shardings are propagated by the compiler from the constraints we place (GSPMD style).
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices == jax.devices() or devices == jax.local_devices():
        # make_mesh orders devices by the physical topology (ICI rings on TPU).
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)
