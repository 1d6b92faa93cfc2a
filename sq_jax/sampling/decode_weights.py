"""How the decode programs hold the projection kernels: in the arrangement the backend's matrix products want.

The model stores every projection kernel [*out, *in] (Hugging Face's layout; training keeps it). XLA's GPU
compiler wants exactly that for decoding (the contracted axis minor). XLA:CPU wants it too for one slot, where
each product is a matrix-vector product that XLA runs itself (the 100M shape's decode step: 11.5 ms against
[out, in], 13.7 ms against [in, out]), but not for several slots, where it hands the product to its matmul
library (YNNPACK), which runs 15-40% faster against [in, out] (8 slots: 28 ms a step against 34). XLA:CPU resolves
`Layout.AUTO` to row-major and keeps loop-carried weights row-major whatever layout they arrive in, so no
compiler-chosen layout can express [in, out] there. An engine of several slots on CPU therefore keeps each kernel
transposed to [*in, *out] (once, when it loads), and every decode program transposes it back to the model's
logical shape inside the traced step, where XLA folds the transpose into the product instead of copying.
`Layout.AUTO` (`state_layout.py`) then picks the physical layout on top of this.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# Kernel name -> how many trailing axes are its input (contracted) axes.
_INPUT_AXES = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1,
               "lm_head": 1}
IN_MAJOR_PLATFORMS = frozenset({"cpu"})


def _input_axes(path: tuple) -> int | None:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return next((_INPUT_AXES[n] for n in reversed(names) if isinstance(n, str) and n in _INPUT_AXES), None)


def arrangement(params: nnx.State, platform: str, slots: int) -> nnx.State:
    """Per leaf, the axis permutation the decode programs of `slots` slots store it in (`None`: as the model
    stores it)."""
    in_major = platform in IN_MAJOR_PLATFORMS and slots > 1

    def perm(path: tuple, x: Any) -> tuple[int, ...] | None:
        inputs = _input_axes(path)
        if not in_major or inputs is None:
            return None
        ndim = len(x.shape)
        return tuple(range(ndim - inputs, ndim)) + tuple(range(ndim - inputs))

    return jax.tree_util.tree_map_with_path(perm, params)


def _is_perm(x: Any) -> bool:
    return x is None or isinstance(x, tuple)


def arrange(params: nnx.State, perms: nnx.State) -> nnx.State:
    """`params` stored as `perms` says, leaf by leaf: the engine's reference to each original is dropped as its
    arranged copy is made, so at most one leaf is held twice on its account (the caller's model keeps its own)."""
    return jax.tree.map(lambda p, x: x if p is None else _transpose(x, p), perms, params, is_leaf=_is_perm)


def restore(params: nnx.State, perms: nnx.State) -> nnx.State:
    """The model's logical params from arranged ones (traced: XLA folds each transpose into its product)."""

    def back(p: tuple[int, ...] | None, x: Any) -> Any:
        if p is None:
            return x
        # As one 2-D transpose between reshapes: the model flattens each kernel to [out, in] for its product
        # (`models/transformer.matmul_out_in`), and XLA cancels those reshapes and folds a 2-D transpose into the
        # product; an N-D transpose under a reshape it copies.
        inputs = len(p) - p[0]  # the arranged leading axes are the input axes
        logical = tuple(x.shape[p.index(a)] for a in range(len(p)))
        flat = x.reshape(math.prod(x.shape[:inputs]), -1).T
        return flat.reshape(logical)

    return jax.tree.map(back, perms, params, is_leaf=_is_perm)


def platform_of(params: nnx.State) -> str:
    """The platform the params live on (their first leaf's devices; abstract leaves carry a sharding)."""
    leaf = jax.tree.leaves(params)[0]
    sharding = leaf.sharding if getattr(leaf, "sharding", None) is not None else None
    return next(iter(sharding.device_set)).platform if sharding is not None else jax.default_backend()


def _transpose(x: Any, perm: tuple[int, ...]) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(x.shape[a] for a in perm), x.dtype)
    return jnp.transpose(x, perm)
