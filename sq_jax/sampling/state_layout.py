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
from sq_jax.models.kv_cache import init_cache
from sq_jax.sampling import engine_core
from sq_jax.sampling.engine_core import DecodeState


def empty_state(cfg: ModelConfig, slots: int, length: int) -> DecodeState:
    """A decode state with every slot empty (traced: call under `jit` or `eval_shape`)."""
    zeros = jnp.zeros
    return DecodeState(
        cache=init_cache(cfg, slots, length),
        tokens=zeros((slots,), jnp.int32), generated=zeros((slots,), jnp.int32), active=zeros((slots,), bool),
        keys=zeros((slots, 2), jnp.uint32), temperature=zeros((slots,), jnp.float32),
        top_p=jnp.ones((slots,), jnp.float32), top_k=zeros((slots,), jnp.int32), max_tokens=zeros((slots,), jnp.int32),
    )


class StatePrograms:
    """The jitted programs over one engine's decode state, all compiled for the state formats XLA chose.

    The formats are chosen on first use, by compiling the decode block for the sampling mode in force then
    (usually greedy: nothing is admitted before the first `init`); that compiled block is kept and used.
    `params` and `stop_ids` are the engine's (abstract ones will do for `lowered_block`).
    """

    def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, stop_ids: jax.Array,
                 make_state: Callable[[], DecodeState], shardings: DecodeState, steps: int):
        self._graphdef, self._params, self._stop_ids = graphdef, params, stop_ids
        self._make_state, self._shardings, self._steps = make_state, shardings, steps
        self._lock = threading.Lock()
        self._formats: DecodeState | None = None
        self._generate: dict[bool, Callable] = {}
        self._programs: dict[str, Callable] = {}

    def formats(self, sampling: bool) -> DecodeState:
        with self._lock:
            if self._formats is None:
                self._formats = self._choose(sampling)
            return self._formats

    def _block(self, sampling: bool) -> Callable:
        return functools.partial(engine_core.generate, self._graphdef, steps=self._steps, sampling=sampling)

    def _abstract(self) -> DecodeState:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            jax.eval_shape(self._make_state), self._shardings)

    def _choose(self, sampling: bool) -> DecodeState:
        auto = jax.tree.map(lambda s: Format(Layout.AUTO, s), self._shardings)
        block = jax.jit(self._block(sampling), in_shardings=(None, auto, None), out_shardings=(auto, None),
                        donate_argnums=1)
        compiled = block.lower(self._params, self._abstract(), self._stop_ids).compile()
        formats = compiled.input_formats[0][1]
        if _same_layouts(compiled.output_formats[0], formats):  # usable as is: no second compile
            self._generate[sampling] = compiled
        return formats

    def _pinned_block(self, sampling: bool, formats: DecodeState) -> Callable:
        return jax.jit(self._block(sampling), in_shardings=(None, formats, None), out_shardings=(formats, None),
                       donate_argnums=1)

    def lowered_block(self, sampling: bool) -> Any:
        """The decode block lowered for the chosen formats: for inspecting its HLO."""
        return self._pinned_block(sampling, self.formats(sampling)).lower(self._params, self._abstract(),
                                                                          self._stop_ids)

    def generate(self, sampling: bool) -> Callable:
        """The decode block: `(params, state, stop_ids) -> (state, results)`."""
        formats = self.formats(sampling)
        with self._lock:
            if sampling not in self._generate:
                self._generate[sampling] = self._pinned_block(sampling, formats)
            return self._generate[sampling]

    def _program(self, name: str, sampling: bool, build: Callable[[DecodeState], Callable]) -> Callable:
        formats = self.formats(sampling)
        with self._lock:
            if name not in self._programs:
                self._programs[name] = build(formats)
            return self._programs[name]

    def init(self, sampling: bool) -> DecodeState:
        return self._program("init", sampling, lambda f: jax.jit(self._make_state, out_shardings=f))()

    def insert(self, sampling: bool) -> Callable:
        """`(prefix, state, slot) -> state`."""
        return self._program("insert", sampling, lambda f: jax.jit(
            engine_core.insert, in_shardings=(None, f, None), out_shardings=f, donate_argnums=1))

    def insert_batch(self, sampling: bool) -> Callable:
        """`(batch, state, rows, slots, settings, count) -> state`."""
        return self._program("insert_batch", sampling, lambda f: jax.jit(
            engine_core.insert_batch, in_shardings=(None, f, None, None, None, None), out_shardings=f,
            donate_argnums=1))


def _same_layouts(a: Any, b: Any) -> bool:
    return all(x.layout == y.layout and x.sharding == y.sharding
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
