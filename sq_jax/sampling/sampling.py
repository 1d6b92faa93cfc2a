"""Pure sampling: temperature, top-k, top-p (nucleus) and greedy, on one row of logits with its own key.

Per-request keys (`fold_in(request_key, token_index)`) make a sample independent of which slot or batch it ran in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Host-side request settings; validated on construction so a bad value fails the request, not a step."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # 0 = no top-k filter
    max_tokens: int = 512
    seed: int = 0
    stop: tuple[str, ...] = ()  # extra stop strings, applied on the decoded text

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")


@dataclasses.dataclass(frozen=True)
class SamplingDefaults:
    """A config's sampling section: what a request that sets nothing itself is sampled with."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 512

    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_tokens=self.max_tokens)


def filter_logits(logits: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Temperature-scaled logits [vocab] with everything outside top-k and top-p set to -inf (order as HF)."""
    scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    sorted_desc = jnp.sort(scaled)[::-1]
    vocab = scaled.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = sorted_desc[k - 1]
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    # top-p over what top-k left: a token stays if the mass strictly before it is below top_p.
    sorted_desc = jnp.where(jnp.arange(vocab) < k, sorted_desc, -jnp.inf)
    probs = jax.nn.softmax(sorted_desc)
    mass_before = jnp.cumsum(probs) - probs
    keep_sorted = mass_before < top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf))
    return jnp.where(scaled < threshold, -jnp.inf, scaled)


def greedy_token(logits: jax.Array) -> jax.Array:
    """`jnp.argmax(logits, axis=-1)` as int32: the first maximum (the first NaN if any). On CPU it is computed as
    two single-output reductions: XLA:CPU emits argmax's (value, index) reduction as scalar code, 4.6 ms of a
    113 ms decode step at 64 slots over a 32K vocabulary, where a max and a min of indices vectorize. Other
    backends keep argmax's one reduction."""
    return jax.lax.platform_dependent(logits, cpu=_first_maximum_by_two_reductions,
                                      default=lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32))


def _first_maximum_by_two_reductions(logits: jax.Array) -> jax.Array:
    vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    first = (logits == top) | jnp.isnan(logits)
    return jnp.min(jnp.where(first, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1).astype(jnp.int32)


def sample_token(
    logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array
) -> jax.Array:
    """One token id from `logits` [vocab]; temperature 0 is greedy."""
    greedy = greedy_token(logits)
    sampled = jax.random.categorical(key, filter_logits(logits, temperature, top_p, top_k)).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


def request_key(seed: int) -> np.ndarray:
    """Raw key data (uint32[2]) of `jax.random.key(seed)` under the default threefry PRNG, built on the host
    (a device round trip per request is measurable); `key_data_matches_jax` in the tests pins the layout."""
    if jax.config.jax_default_prng_impl != "threefry2x32":
        return np.asarray(jax.random.key_data(jax.random.key(seed)))
    return np.array([0, seed], np.uint32)


def token_key(key_data: jax.Array, index: jax.Array) -> jax.Array:
    """The key of a request's `index`-th generated token."""
    return jax.random.fold_in(jax.random.wrap_key_data(key_data), index)


# JetStream's DecodeRequest has no sampling fields; sq-jax sends them as JSON in `session_cache`.
SAMPLING_KEY = "sq_jax"
_REQUEST_FIELDS = ("temperature", "top_p", "top_k", "seed")


def check_number(name: str, value: Any, *, integer: bool = False) -> None:
    """A ValueError naming `name` unless `value` is a number (an int when `integer`); JSON booleans are not."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")


def sampling_to_session_cache(sampling: SamplingParams) -> str:
    return json.dumps({SAMPLING_KEY: {name: getattr(sampling, name) for name in _REQUEST_FIELDS}})


def sampling_from_request(session_cache: str, max_tokens: int, default: SamplingParams) -> SamplingParams:
    """Per-request settings from `session_cache` JSON over `default`; `max_tokens` 0 means the default."""
    overrides: dict[str, Any] = {}
    if session_cache:
        try:
            overrides = dict(json.loads(session_cache)[SAMPLING_KEY])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"session_cache must be JSON {{{SAMPLING_KEY!r}: {{...}}}}, got {session_cache!r}") from e
        unknown = set(overrides) - set(_REQUEST_FIELDS)
        if unknown:
            raise ValueError(f"unknown sampling fields {sorted(unknown)}; allowed: {', '.join(_REQUEST_FIELDS)}")
        for name, value in overrides.items():
            check_number(name, value, integer=name in ("top_k", "seed"))
    if max_tokens:
        overrides["max_tokens"] = max_tokens
    return dataclasses.replace(default, **overrides)
