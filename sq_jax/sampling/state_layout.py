"""The device layouts of the decode state and of the weights: XLA picks them for the decode block, and every
program that takes the state or the weights (init, insert, prefill, generate) is compiled to keep them, so
neither the KV cache nor any weight is relaid out between calls or per block.

JAX gives a jitted function's arguments the default (row-major) layout unless told otherwise. The decode block
often prefers another layout for the cache (tiled differently on TPU, transposed on some GPU shapes) and for
weights, and XLA then copies every layer's cache or kernel into that layout on each call: on a v5e at batch 1
that was 413 MB of cache per block. Compiling the block once with `Layout.AUTO` for the state and the params,
relaying the params out once into the chosen formats and pinning those formats everywhere removes those copies.
XLA:CPU resolves `Layout.AUTO` to the default layouts (and keeps loop-carried buffers row-major whatever they
arrive in), so on CPU the chosen formats are the default ones and the relayout copies nothing; what the CPU
wants instead, [in, out] kernels, is an arrangement of the arrays themselves (`decode_weights.py`), made once
before the formats are chosen.
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
from sq_jax.sampling import decode_weights, engine_core
from sq_jax.sampling.engine_core import DecodeState


def empty_state(cfg: ModelConfig, slots: int, length: int) -> DecodeState:
    """A decode state with every slot empty (traced: call under `jit` or `eval_shape`)."""
    zeros = jnp.zeros
    return DecodeState(
        cache=init_cache(cfg, slots, length),
        tokens=zeros((slots,), jnp.int32), generated=zeros((slots,), jnp.int32), active=zeros((slots,), bool),
        keys=zeros((slots, 2), jnp.uint32), temperature=zeros((slots,), jnp.float32),
        top_p=jnp.ones((slots,), jnp.float32), top_k=zeros((slots,), jnp.int32), max_tokens=zeros((slots,), jnp.int32),
        logprobs=zeros((slots,), jnp.float32),
    )


class StatePrograms:
    """The jitted programs over one engine's weights and decode state, all compiled for the formats XLA chose.

    The formats are chosen on first use, by compiling the decode block for the sampling mode in force then
    (usually greedy: nothing is admitted before the first `init`); that compiled block is kept and used, and the
    params are relaid out into their chosen formats then, once, leaf by leaf (a leaf already in its format is
    kept as it is, so on CPU nothing is copied). `params` and `stop_ids` are the engine's (abstract ones will do
    for `lowered_block`).
    """

    def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, stop_ids: jax.Array,
                 make_state: Callable[[], DecodeState], shardings: DecodeState, steps: int):
        slots = jax.eval_shape(make_state).tokens.shape[0]
        self._perms = decode_weights.arrangement(params, decode_weights.platform_of(params), slots)
        self._graphdef, self._params = graphdef, decode_weights.arrange(params, self._perms)
        self._stop_ids, self._make_state, self._shardings, self._steps = stop_ids, make_state, shardings, steps
        self._lock = threading.Lock()
        self._formats: DecodeState | None = None
        self._param_formats: nnx.State | None = None
        self._generate: dict[bool, Callable] = {}
        self._programs: dict[str, Callable] = {}

    def formats(self, sampling: bool) -> DecodeState:
        """The decode state's formats."""
        with self._lock:
            if self._formats is None:
                self._formats, self._param_formats = self._choose(sampling)
                self._params = relayout(self._params, self._param_formats)
            return self._formats

    def param_formats(self, sampling: bool) -> nnx.State:
        self.formats(sampling)
        return self._param_formats

    def params(self, sampling: bool) -> nnx.State:
        """The engine's params as the decode programs take them: arranged for the backend
        (`decode_weights`), in the formats the decode block was compiled for."""
        self.formats(sampling)
        return self._params

    def _block(self, sampling: bool) -> Callable:
        return functools.partial(engine_core.generate, self._graphdef, steps=self._steps, sampling=sampling,
                                 restore=self._restore)

    def _restore(self, params: nnx.State) -> nnx.State:
        return decode_weights.restore(params, self._perms)

    def _with_model_params(self, fn: Callable) -> Callable:
        """`fn(graphdef, params, *args)` taking the arranged params (the restore folds into its products)."""
        return lambda params, *args: fn(self._graphdef, self._restore(params), *args)

    def _abstract(self) -> DecodeState:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            jax.eval_shape(self._make_state), self._shardings)

    def _choose(self, sampling: bool) -> tuple[DecodeState, nnx.State]:
        auto = jax.tree.map(lambda s: Format(Layout.AUTO, s), self._shardings)
        auto_params = jax.tree.map(lambda x: Format(Layout.AUTO, x.sharding), self._params)
        block = jax.jit(self._block(sampling), in_shardings=(auto_params, auto, None), out_shardings=(auto, None),
                        donate_argnums=1)
        abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                       self._params)  # JAX refuses AUTO for an array that has a layout already
        compiled = block.lower(abstract_params, self._abstract(), self._stop_ids).compile()
        param_formats, formats = compiled.input_formats[0][:2]
        if _same_layouts(compiled.output_formats[0], formats):  # usable as is: no second compile
            self._generate[sampling] = compiled
        return formats, param_formats

    def _pinned_block(self, sampling: bool, formats: DecodeState) -> Callable:
        return jax.jit(self._block(sampling), in_shardings=(self._param_formats, formats, None),
                       out_shardings=(formats, None), donate_argnums=1)

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

    def prefill(self, sampling: bool) -> Callable:
        """`(params, tokens, true_length, existing, settings) -> prefix`, params in their chosen formats."""
        return self._program("prefill", sampling, lambda _: jax.jit(
            self._with_model_params(engine_core.prefill), in_shardings=(self._param_formats, None, None, None, None)))

    def prefill_batch(self, sampling: bool) -> Callable:
        """`(params, tokens, true_lengths) -> prefix batch`, params in their chosen formats."""
        return self._program("prefill_batch", sampling, lambda _: jax.jit(
            self._with_model_params(engine_core.prefill_batch), in_shardings=(self._param_formats, None, None)))

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


def relayout(params: nnx.State, formats: nnx.State) -> nnx.State:
    """`params` in `formats`, leaf by leaf: one leaf's second copy at a time, none for a leaf already in its
    format (abstract leaves are returned as they are)."""

    def one(x: Any, fmt: Format) -> Any:
        if not isinstance(x, jax.Array) or (x.format.layout == fmt.layout and x.sharding == fmt.sharding):
            return x
        return jax.device_put(x, fmt)

    return jax.tree.map(one, params, formats)


def _same_layouts(a: Any, b: Any) -> bool:
    return all(x.layout == y.layout and x.sharding == y.sharding
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
