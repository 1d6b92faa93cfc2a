"""The decode state's device layout: XLA picks it for the decode block, and every program that takes or returns
the state (init, insert, generate) is compiled to keep it, so the KV cache is never relaid out between calls.

JAX gives a jitted function's arguments the default (row-major) layout unless told otherwise. The decode block
often prefers another layout for the cache (tiled differently on TPU, transposed on some GPU shapes), and XLA
then copies every layer's cache into that layout and back on each call: on a v5e at batch 1 that was 413 MB per
block. Compiling the block once with `Layout.AUTO` for the state and pinning the chosen formats everywhere
removes those copies; where the default is already best (CPU), the chosen formats are the default ones.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.layout import Format, Layout

from sq_jax.models.config import ModelConfig
from sq_jax.models.kv_cache import KVCache, kv_shapes
from sq_jax.sampling import engine_core
from sq_jax.sampling.engine_core import DecodeState


def empty_state(cfg: ModelConfig, slots: int, length: int) -> DecodeState:
    """A decode state with every slot empty (traced: call under `jit` or `eval_shape`)."""
    k_shape, v_shape = kv_shapes(cfg, slots, length)
    dtype = jnp.dtype(cfg.dtype)
    zeros, layers = jnp.zeros, range(cfg.num_layers)
    return DecodeState(
        cache=KVCache(k=tuple(zeros(k_shape, dtype) for _ in layers), v=tuple(zeros(v_shape, dtype) for _ in layers),
                      positions=zeros((slots, length), jnp.int32), segment_ids=zeros((slots, length), jnp.int32),
                      lengths=zeros((slots,), jnp.int32)),
        tokens=zeros((slots,), jnp.int32), generated=zeros((slots,), jnp.int32), active=zeros((slots,), bool),
        keys=zeros((slots, 2), jnp.uint32), temperature=zeros((slots,), jnp.float32),
        top_p=jnp.ones((slots,), jnp.float32), top_k=zeros((slots,), jnp.int32), max_tokens=zeros((slots,), jnp.int32),
    )


class StatePrograms:
    """The jitted programs over one engine's decode state, all compiled for the state formats XLA chose.

    The formats are chosen on first use, by compiling the decode block for the sampling mode in force then
    (usually greedy: nothing is admitted before the first `init`); that compiled block is kept and used.
    """

    def __init__(self, graphdef: nnx.GraphDef, make_state: Callable[[], DecodeState],
                 shardings: DecodeState, steps: int):
        self._graphdef, self._make_state, self._shardings, self._steps = graphdef, make_state, shardings, steps
        self._lock = threading.Lock()
        self._formats: DecodeState | None = None
        self._generate: dict[bool, Callable] = {}
        self._insert: Callable | None = None
        self._insert_batch: Callable | None = None

    def formats(self, params: nnx.State, stop_ids: jax.Array, sampling: bool) -> DecodeState:
        with self._lock:
            if self._formats is None:
                self._formats = self._choose(params, stop_ids, sampling)
            return self._formats

    def _block(self, sampling: bool) -> Callable:
        return functools.partial(engine_core.generate, self._graphdef, steps=self._steps, sampling=sampling)

    def _choose(self, params: nnx.State, stop_ids: jax.Array, sampling: bool) -> DecodeState:
        auto = jax.tree.map(lambda s: Format(Layout.AUTO, s), self._shardings)
        block = jax.jit(self._block(sampling), in_shardings=(None, auto, None), out_shardings=(auto, None),
                        donate_argnums=1)
        compiled = block.lower(params, self._abstract(), stop_ids).compile()
        formats = compiled.input_formats[0][1]
        if _same_layouts(compiled.output_formats[0], formats):
            self._generate[sampling] = compiled
        return formats

    def lowered_block(self, params: nnx.State, stop_ids: jax.Array, sampling: bool) -> Any:
        """The decode block lowered for the chosen formats (params may be abstract): for inspecting its HLO."""
        formats = self.formats(params, stop_ids, sampling)
        block = jax.jit(self._block(sampling), in_shardings=(None, formats, None), out_shardings=(formats, None),
                        donate_argnums=1)
        return block.lower(params, self._abstract(), stop_ids)

    def _abstract(self) -> DecodeState:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            jax.eval_shape(self._make_state), self._shardings)

    def init(self, params: nnx.State, stop_ids: jax.Array, sampling: bool) -> DecodeState:
        return jax.jit(self._make_state, out_shardings=self.formats(params, stop_ids, sampling))()

    def generate(self, params: nnx.State, stop_ids: jax.Array, sampling: bool) -> Callable:
        formats = self.formats(params, stop_ids, sampling)
        with self._lock:
            if sampling not in self._generate:
                self._generate[sampling] = jax.jit(self._block(sampling), in_shardings=(None, formats, None),
                                                   out_shardings=(formats, None), donate_argnums=1)
            return self._generate[sampling]

    def insert(self, formats: DecodeState) -> Callable:
        with self._lock:
            if self._insert is None:
                self._insert = jax.jit(engine_core.insert, in_shardings=(None, formats, None),
                                       out_shardings=formats, donate_argnums=1)
            return self._insert

    def insert_batch(self, formats: DecodeState) -> Callable:
        with self._lock:
            if self._insert_batch is None:
                self._insert_batch = jax.jit(engine_core.insert_batch,
                                             in_shardings=(None, formats, None, None, None, None),
                                             out_shardings=formats, donate_argnums=1)
            return self._insert_batch


def _same_layouts(a: Any, b: Any) -> bool:
    return all(x.layout == y.layout and x.sharding == y.sharding
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

