"""The sampling engine: bucketed prefill with a prefix cache, per-slot decode state, jitted insert / generate.

`Engine` follows JetStream's Engine API (prefill / insert / generate / init_decode_state ...) without importing
JetStream, so the raw loop and tests never pay for TensorFlow; `jetstream_compat.JetStreamEngine` adds the
JetStream base class and tokenizer hooks when serving.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sq_jax.models.transformer import Transformer
from sq_jax.parallel.sharding import logical_to_spec
from sq_jax.sampling import engine_core
from sq_jax.sampling.engine_core import DecodeState, Prefix
from sq_jax.sampling.sampling import SamplingParams, request_key
from sq_jax.sampling.state_layout import StatePrograms, empty_state

log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """A prompt longer than the engine's prefill limit (with overlong_prompt='error')."""


def prefill_buckets(max_prefill_length: int, smallest: int = 16) -> list[int]:
    """Powers of two from `smallest`, capped by (and always ending at) `max_prefill_length`."""
    buckets, size = [], smallest
    while size < max_prefill_length:
        buckets.append(size)
        size *= 2
    return buckets + [max_prefill_length]


def settings_of(sampling: SamplingParams) -> dict[str, np.ndarray]:
    # Host (numpy) scalars: building device scalars per request cost more than the prefill dispatch itself.
    return {
        "key": request_key(sampling.seed),
        "temperature": np.float32(sampling.temperature),
        "top_p": np.float32(sampling.top_p),
        "top_k": np.int32(sampling.top_k),
        "max_tokens": np.int32(sampling.max_tokens),
    }


class Engine:
    """Batched decoding over `max_slots` slots of one model on one mesh (params sharded by the logical rules)."""

    def __init__(
        self,
        model: Transformer,
        *,
        stop_ids: Sequence[int],
        max_slots: int = 64,
        max_cache_length: int = 2048,
        max_prefill_length: int = 1024,
        decode_steps: int = 8,
        overlong_prompt: str = "error",
        prefix_cache_size: int = 32,
        mesh: Mesh | None = None,
    ):
        if overlong_prompt not in ("error", "truncate_left"):
            raise ValueError(f"overlong_prompt must be 'error' or 'truncate_left', got {overlong_prompt!r}")
        if max_prefill_length > max_cache_length:
            raise ValueError(f"max_prefill_length={max_prefill_length} exceeds max_cache_length={max_cache_length}")
        vocab = model.config.vocab_size
        bad = [i for i in stop_ids if not 0 <= int(i) < vocab]
        if bad:
            raise ValueError(f"stop token ids {bad} are not ids of this vocabulary (size {vocab})")
        self.config = model.config
        self.graphdef, params = nnx.split(model, nnx.Param)
        self.stop_ids = tuple(int(i) for i in stop_ids)
        self._stop_array = jnp.asarray(self.stop_ids, jnp.int32).reshape(-1)  # may be empty: stop on max_tokens
        self.max_slots = max_slots
        self.max_cache_length = max_cache_length
        self._max_prefill_length = max_prefill_length
        self.buckets = prefill_buckets(max_prefill_length)
        self.decode_steps = decode_steps
        self.overlong_prompt = overlong_prompt
        self._mesh = mesh or jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
                                               ("data", "fsdp", "tensor"))
        self._prefix_cache: collections.OrderedDict[tuple[int, ...], Prefix] = collections.OrderedDict()
        self._prefix_cache_size = prefix_cache_size
        self._lock = threading.Lock()
        # Every device computation is enqueued under this lock. Programs over several devices (sharded params)
        # must reach every device in the same order, or their collectives can pair up wrongly (XLA aborts);
        # JetStream calls prefill and generate from different threads.
        self.dispatch_lock = threading.RLock()
        self.stats = {"prefills": 0, "prefix_hits": 0, "truncated_prompts": 0}
        # Set (never cleared) once a request with temperature > 0 is prefilled: decode blocks then compile the
        # sampling path, which is exact for greedy slots too; until then they run the greedy-only block.
        self.sampling_admitted = False
        self._row_jit = jax.jit(engine_core.row_of)
        # Programs over the weights and the decode state (prefill / init / insert / generate), compiled for the
        # layouts XLA picks for the decode block; they bind the graph definition (hashing it per call as a static
        # argument cost ~0.5 ms).
        make_state = functools.partial(empty_state, self.config, max_slots, max_cache_length)
        self._state = StatePrograms(self.graphdef, params, self._stop_array, make_state,
                                    self._state_shardings(make_state), decode_steps)

    # ------------------------------------------------------------------------------------ JetStream API
    @property
    def max_concurrent_decodes(self) -> int:
        return self.max_slots

    @property
    def samples_per_slot(self) -> int:
        return 1

    @property
    def max_prefill_length(self) -> int:
        return self._max_prefill_length

    @property
    def mesh(self) -> Mesh:
        return self._mesh

    @property
    def colocated_cpus(self) -> None:
        return None

    @property
    def params(self) -> nnx.State:
        """The weights, relaid out (once, on first use) into the formats the decode block was compiled for."""
        return self._state.params(self.sampling_admitted)

    def load_params(self, *args: Any, **kwargs: Any) -> nnx.State:
        return self.params

    def get_prefix_destination_sharding(self) -> Any:
        return None

    def init_decode_state(self, *args: Any, **kwargs: Any) -> DecodeState:
        with self.dispatch_lock:
            return self._state.init(self.sampling_admitted)

    def _state_shardings(self, make_state: Callable[[], DecodeState]) -> DecodeState:
        """Slots over data x fsdp, kv heads over tensor (each replicated where the mesh does not divide it)."""
        slot_axes = self._axes_if_divisible("cache_batch", self.max_slots)
        head_axes = self._axes_if_divisible("act_kv_heads", self.config.num_kv_heads)

        def sharding(x: jax.ShapeDtypeStruct) -> NamedSharding:
            if x.ndim == 4:  # k, v per layer: [slots, kv_heads, length or head_dim, head_dim or length]
                return NamedSharding(self._mesh, PartitionSpec(slot_axes, head_axes, None, None))
            return NamedSharding(self._mesh, PartitionSpec(slot_axes, *([None] * (x.ndim - 1))))

        return jax.tree.map(sharding, jax.eval_shape(make_state))

    def _axes_if_divisible(self, logical: str, size: int):
        """The mesh axes of `logical` when they divide `size`; replicated otherwise (e.g. 2 kv heads, tensor 8)."""
        axes = logical_to_spec((logical,))[0]
        parts = 1
        for a in (axes,) if isinstance(axes, str) else (axes or ()):
            parts *= self._mesh.shape[a]
        return axes if size % parts == 0 else None

    def prefill(
        self,
        *,
        params: nnx.State,
        existing_prefix: Prefix | None = None,
        padded_tokens: jax.Array,
        true_length: int,
        sampling: SamplingParams | None = None,
    ) -> Prefix:
        """JetStream's prefill on one padded bucket; `sampling` (an sq-jax extension) sets the request's
        key and settings, defaulting to greedy with seed 0."""
        settings = self._settings(sampling or SamplingParams(temperature=0.0))
        self.stats["prefills"] += 1
        with self.dispatch_lock:
            return self._state.prefill(self.sampling_admitted)(
                params, np.asarray(padded_tokens, np.int32), np.int32(true_length), existing_prefix, settings)

    def insert(self, prefix: Prefix, decode_state: DecodeState, slot: int) -> DecodeState:
        with self.dispatch_lock:
            return self._state.insert(self.sampling_admitted)(prefix, decode_state, np.int32(slot))

    def generate(self, params: nnx.State, decode_state: DecodeState) -> tuple[DecodeState, jax.Array]:
        return self.decode_block(decode_state, params)

    def decode_block(self, decode_state: DecodeState, params: nnx.State | None = None) -> tuple[DecodeState, jax.Array]:
        """`decode_steps` steps; results [slots, 2 * steps + 1]: tokens, validity, count at the first token."""
        params = self.params if params is None else params
        with self.dispatch_lock:
            return self._state.generate(self.sampling_admitted)(params, decode_state, self._stop_array)

    # --------------------------------------------------------------------------------------- sq-jax API
    def fit_prompt(self, token_ids: Sequence[int]) -> list[int]:
        """The prompt as prefilled: within the limit, or cut to its last tokens (counted), or an error."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("empty prompt: a request needs at least one prompt token")
        vocab = self.config.vocab_size
        bad = [(i, t) for i, t in enumerate(ids) if not 0 <= t < vocab]
        if bad:  # out of range reads NaN embeddings; a negative id would silently index from the end
            shown = ", ".join(f"{t} at position {i}" for i, t in bad[:3])
            raise ValueError(f"prompt token ids must be in [0, {vocab}) (the vocabulary size); got {shown}"
                             + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
        limit = self._max_prefill_length
        if len(ids) <= limit:
            return ids
        if self.overlong_prompt == "error":
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens, more than max_prefill_length={limit} "
                "(raise max_prefill_length or set overlong_prompt='truncate_left')"
            )
        self.stats["truncated_prompts"] += 1
        return ids[-limit:]

    def pad_to_bucket(self, ids: Sequence[int]) -> tuple[np.ndarray, int]:
        bucket = next(b for b in self.buckets if b >= len(ids))
        padded = np.zeros(bucket, np.int32)
        padded[: len(ids)] = ids
        return padded, len(ids)

    def check_request(self, token_ids: Sequence[int], sampling: SamplingParams) -> list[int]:
        """The prompt as it will be prefilled; a ValueError when the request cannot run on this engine."""
        ids = self.fit_prompt(token_ids)
        if len(ids) + sampling.max_tokens > self.max_cache_length:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_tokens ({sampling.max_tokens}) exceeds the cache length "
                f"{self.max_cache_length}"
            )
        return ids

    def prefill_request(self, token_ids: Sequence[int], sampling: SamplingParams) -> Prefix:
        """Prefill a prompt for one request, reusing the KV of an identical earlier prompt (prefix cache)."""
        ids = self.check_request(token_ids, sampling)
        key = tuple(ids)
        with self._lock:
            cached = self._prefix_cache.get(key)
            if cached is not None:
                self._prefix_cache.move_to_end(key)
                self.stats["prefix_hits"] += 1
        if cached is None:
            padded, true_length = self.pad_to_bucket(ids)
            cached = self.prefill(params=self.params, padded_tokens=padded, true_length=true_length)
            self._remember(key, cached)
        return engine_core.with_settings(cached, self._settings(sampling))

    def _settings(self, sampling: SamplingParams) -> dict[str, np.ndarray]:
        """A request's device settings; notes a sampled request before it can reach a decode block."""
        if sampling.temperature > 0:
            self.sampling_admitted = True
        return settings_of(sampling)

    def clear_prefix_cache(self) -> None:
        with self._lock:
            self._prefix_cache.clear()

    def _remember(self, key: tuple[int, ...], prefix: Prefix) -> None:
        with self._lock:
            self._prefix_cache[key] = prefix
            while len(self._prefix_cache) > self._prefix_cache_size:
                self._prefix_cache.popitem(last=False)

    def insert_many(self, requests: Sequence[tuple[Sequence[int], SamplingParams]], slots: Sequence[int],
                    decode_state: DecodeState) -> DecodeState:
        """Prefill and insert several requests with one forward pass per prompt bucket (prompts already fitted).

        Cached prompts come from the prefix cache; identical prompts within the call are prefilled once.
        """
        misses: dict[tuple, list[int]] = {}
        for i, (ids, sampling) in enumerate(requests):
            # prefix_cache_size=0 turns reuse off entirely, in-call deduplication included (for comparisons).
            key = tuple(ids) if self._prefix_cache_size else (i, *ids)
            with self._lock:
                cached = self._prefix_cache.get(key)
            if cached is not None:
                self.stats["prefix_hits"] += 1
                prefix = engine_core.with_settings(cached, self._settings(sampling))
                decode_state = self.insert(prefix, decode_state, slots[i])
            else:
                misses.setdefault(key, []).append(i)
        by_bucket: dict[int, list[tuple[int, ...]]] = {}
        for key in misses:
            by_bucket.setdefault(next(b for b in self.buckets if b >= len(requests[misses[key][0]][0])), []).append(key)
        for bucket, prompts in by_bucket.items():
            rows = 1 << max(len(prompts) - 1, 0).bit_length()  # pad rows to a power of two: few compiles
            tokens = np.zeros((rows, bucket), np.int32)
            lengths = np.ones(rows, np.int32)
            for r, key in enumerate(prompts):
                ids = requests[misses[key][0]][0]
                tokens[r, : len(ids)] = ids
                lengths[r] = len(ids)
            self.stats["prefills"] += len(prompts)
            with self.dispatch_lock:
                batch = self._state.prefill_batch(self.sampling_admitted)(self.params, tokens, lengths)
            members = [(r, i) for r, key in enumerate(prompts) for i in misses[key]]
            self.stats["prefix_hits"] += len(members) - len(prompts)
            if len(prompts) <= 4 and self._prefix_cache_size:
                # A few distinct prompts (question synthesis, n samples per question): keep them for later waves.
                default = settings_of(SamplingParams(temperature=0.0))
                for r, key in enumerate(prompts):
                    with self.dispatch_lock:
                        self._remember(key, self._row_jit(batch, np.int32(r), default))
            padded = 1 << max(len(members) - 1, 0).bit_length()
            settings = [self._settings(requests[i][1]) for _, i in members]
            stacked = {name: np.stack([s[name] for s in settings] + [settings[0][name]] * (padded - len(members)))
                       for name in settings[0]}
            row_ids = np.asarray([r for r, _ in members] + [0] * (padded - len(members)), np.int32)
            slot_ids = np.asarray([slots[i] for _, i in members] + [0] * (padded - len(members)), np.int32)
            with self.dispatch_lock:
                insert_batch = self._state.insert_batch(self.sampling_admitted)
                decode_state = insert_batch(batch, decode_state, row_ids, slot_ids, stacked, np.int32(len(members)))
        return decode_state

