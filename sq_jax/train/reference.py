"""Reference log-probs for preference training: one sharded pass over the pairs before training (stored beside
the run, reused on resume), or a frozen reference model scoring each batch online. Both use `pair_logps`, the
same model code as the policy, so they give the same numbers."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sq_jax.data.dataset import atomic_open
from sq_jax.data.pairs import PreferencePairs
from sq_jax.data.batching import eval_batches
from sq_jax.train.step import batch_sharding
from sq_jax.train.tasks.qpo import pair_logps

log = logging.getLogger(__name__)

MODEL_KEYS = ("tokens", "positions", "segment_ids", "loss_mask")


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded global array, in the order it supplied them."""
    shards = {s.index[0].start or 0: s for s in array.addressable_shards}  # replicas share a row range
    return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


class ReferenceScorer:
    """Scores pairs with frozen reference params; `attach` adds them to a device batch."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, param_shardings: Any, mesh: Mesh, max_pairs: int):
        self.params, self.mesh = params, mesh

        def score(p, batch):
            return pair_logps(nnx.merge(graphdef, p), {k: batch[k] for k in MODEL_KEYS}, max_pairs)

        self._rows = jax.jit(score, in_shardings=(param_shardings, batch_sharding(mesh, accumulated=False)),
                             out_shardings=batch_sharding(mesh, accumulated=False))
        self._accumulated = jax.jit(lambda p, b: jax.lax.map(lambda micro: score(p, micro), b),
                                    in_shardings=(param_shardings, batch_sharding(mesh, accumulated=True)),
                                    out_shardings=batch_sharding(mesh, accumulated=True))

    def attach(self, batch: dict[str, jax.Array], accumulated: bool) -> dict[str, jax.Array]:
        model_batch = {k: batch[k] for k in MODEL_KEYS}
        scores = (self._accumulated if accumulated else self._rows)(self.params, model_batch)
        return {**batch, "reference_logps": scores}

    def precompute(
        self,
        pairs: PreferencePairs,
        seq_len: int,
        rows_per_host: int,
        pad_id: int,
        to_device: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]],
        num_batches: Callable[[int], int],
    ) -> np.ndarray:
        """[pairs, 2] summed reference log-probs (chosen, rejected) of this host's pairs.

        `num_batches(local count)` returns the count every host runs (hosts hold different shares), and
        `to_device` makes a global batch from this host's rows.
        """
        out = np.full((len(pairs), 2), np.nan, np.float32)
        for host in eval_batches(pairs, seq_len, rows_per_host, pad_id, num_batches):
            scores = local_rows(self._rows(self.params, to_device({k: host[k] for k in MODEL_KEYS})))
            index = host["example_index"]
            out[index[index >= 0]] = scores[index >= 0]
        if np.isnan(out).any():
            raise RuntimeError("some pairs got no reference log-probs (packing lost a pair)")
        return out


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_cached(path: Path, key: str, ids: list[str]) -> np.ndarray | None:
    """Cached reference log-probs when they were computed for exactly these pairs and settings."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as cached:
        if str(cached["key"]) != key or cached["ids"].tolist() != ids:
            log.warning("ignoring %s: written for other pairs or settings; recomputing", path)
            return None
        return cached["logps"]


def save_cached(path: Path, key: str, ids: list[str], logps: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:  # a kill mid-write leaves no half cache
        np.savez(f, key=np.asarray(key), ids=np.asarray(ids), logps=logps)

