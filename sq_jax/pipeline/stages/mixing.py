"""The mix stage: question sets from several generators into one, by counts or ratios (SCALEQUEST.md section 5: the
paper's 1M is 400K questions of the DeepSeekMath generator and 600K of the Qwen2-Math one).

Each input is a role named in the stage's `inputs` (any names). Which records an input contributes is decided by a
hash of (seed, role, id), so the choice is deterministic under the pipeline seed, independent of the input's order,
and every chosen record appears exactly once; ids must be unique across the inputs. Each output record says which
input it came from (`source`).
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from sq_jax.data.dataset import dump_row
from sq_jax.pipeline.stages.base import Kind, StageContext


@dataclasses.dataclass(frozen=True)
class MixConfig:
    counts: dict[str, int] | None = None  # role -> how many records it contributes
    ratios: dict[str, float] | None = None  # role -> its share of the mix (normalised to sum 1)
    total: int | None = None  # with ratios: the mix's size; None: the largest the inputs allow at those ratios
    allow_fewer: bool = False  # an input with fewer records than asked contributes all it has instead of failing

    def __post_init__(self) -> None:
        if (self.counts is None) == (self.ratios is None):
            raise ValueError("mix: give exactly one of counts or ratios")
        if self.counts is not None and any(n < 0 for n in self.counts.values()):
            raise ValueError(f"mix: counts must be >= 0, got {self.counts}")
        if self.ratios is not None and (any(r < 0 for r in self.ratios.values()) or sum(self.ratios.values()) <= 0):
            raise ValueError(f"mix: ratios must be >= 0 with a positive sum, got {self.ratios}")
        if self.total is not None and (self.ratios is None or self.total < 0):
            raise ValueError("mix: total goes with ratios and must be >= 0")


def check_roles(cfg: MixConfig, inputs: Mapping[str, str]) -> None:
    """The counts / ratios name exactly the stage's inputs."""
    named = set(cfg.counts if cfg.counts is not None else cfg.ratios)
    if named != set(inputs):
        raise ValueError(f"mix: {'counts' if cfg.counts is not None else 'ratios'} name {sorted(named)} but the "
                         f"stage's inputs are {sorted(inputs)}; name each input once")


def _largest_remainder(total: int, shares: dict[str, float], caps: dict[str, int]) -> dict[str, int]:
    """Integer parts of `total` in proportion to `shares` (summing to `total`), none above its cap."""
    exact = {k: total * v for k, v in shares.items()}
    taken = {k: min(math.floor(x), caps[k]) for k, x in exact.items()}
    by_remainder = sorted(shares, key=lambda k: (-(exact[k] - math.floor(exact[k])), k))
    for k in by_remainder:
        if sum(taken.values()) >= total:
            break
        if taken[k] < caps[k]:
            taken[k] += 1
    return taken


def mix_sizes(cfg: MixConfig, available: dict[str, int]) -> dict[str, int]:
    """How many records each input contributes; an input that cannot give its part is an error naming it."""
    if cfg.counts is not None:
        wanted = dict(cfg.counts)
    else:
        weight = sum(cfg.ratios.values())
        shares = {k: v / weight for k, v in cfg.ratios.items()}
        total = cfg.total
        if total is None:  # the largest mix every input can fill at these ratios
            total = min(math.floor(available[k] / s + 1e-9) for k, s in shares.items() if s > 0)
        caps = available if cfg.allow_fewer else {k: total for k in shares}
        wanted = _largest_remainder(total, shares, caps)
    short = {k: (n, available[k]) for k, n in wanted.items() if n > available[k]}
    if short and not cfg.allow_fewer:
        detail = ", ".join(f"{k!r} has {have} of the {n} asked" for k, (n, have) in short.items())
        raise ValueError(f"mix: {detail}; lower the count or set allow_fewer: true")
    return {k: min(n, available[k]) for k, n in wanted.items()}


def _rank(seed: int, role: str, record_id: str) -> bytes:
    return hashlib.sha256(f"sq-jax/mix/{seed}/{role}/{record_id}".encode()).digest()


def _u64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")  # orders as the digest does (ties in 64 bits aside)


def _scan(ctx: StageContext, role: str) -> tuple[np.ndarray, np.ndarray]:
    """(rank under (seed, role), 64-bit hash of the id) of each of the input's records, in input order."""
    ranks, ids = array.array("Q"), array.array("Q")  # 8 bytes an entry while reading, not a Python int
    for r in ctx.iter_records(role):
        rid = str(r["id"])
        ranks.append(_u64(_rank(ctx.seed, role, rid)))
        ids.append(_u64(hashlib.sha256(rid.encode()).digest()))
    return np.frombuffer(ranks, np.uint64).copy(), np.frombuffer(ids, np.uint64).copy()


def _refuse_shared_ids(ctx: StageContext, id_hashes: dict[str, np.ndarray]) -> None:
    roles = np.concatenate([np.full(len(h), i) for i, h in enumerate(id_hashes.values())] or [np.zeros(0)])
    values, first, counts = np.unique(np.concatenate(list(id_hashes.values()) or [np.zeros(0, np.uint64)]),
                                      return_index=True, return_counts=True)
    if not (counts > 1).any():
        return
    shared = values[counts > 1][0]
    names = list(id_hashes)
    owner = names[int(roles[first[counts > 1][0]])]
    for role in names:  # a second pass, only to name the id
        for r in ctx.iter_records(role):
            if _u64(hashlib.sha256(str(r["id"]).encode()).digest()) == shared and role != owner:
                raise ctx.error(f"id {str(r['id'])!r} is in input {owner!r} and in {role!r}; ids must be unique "
                                "across the mixed inputs")
    raise ctx.error(f"an id occurs twice in input {owner!r}; ids must be unique across the mixed inputs")


def mix(ctx: StageContext, cfg: MixConfig) -> dict[str, Any]:
    """Streams: a pass over each input keeps 16 bytes a record (its rank and id hash); the chosen records then go
    into 256 bucket files by their place in the interleaving, and each bucket is sorted alone (a bucket sort on
    disk), so no step holds more than 1/256 of the mix."""
    check_roles(cfg, ctx.inputs)
    roles = sorted(ctx.inputs)
    scanned = {role: _scan(ctx, role) for role in roles}
    _refuse_shared_ids(ctx, {role: ids for role, (_, ids) in scanned.items()})
    sizes = mix_sizes(cfg, {role: len(ranks) for role, (ranks, _) in scanned.items()})
    buckets = ctx.dir / "_mix_buckets"
    shutil.rmtree(buckets, ignore_errors=True)
    buckets.mkdir(parents=True)
    files = [(buckets / f"{b:03d}.jsonl").open("ab") for b in range(256)]
    try:
        for role in roles:
            chosen = np.zeros(len(scanned[role][0]), bool)
            chosen[np.argsort(scanned[role][0], kind="stable")[: sizes[role]]] = True
            for i, r in enumerate(ctx.iter_records(role)):
                if chosen[i]:
                    key = _rank(ctx.seed, "", str(r["id"]))  # one seeded interleaving: a prefix of the mix is a mix
                    files[key[0]].write(key.hex().encode() + b"\t" + dump_row({**r, "source": role}))
    finally:
        for f in files:
            f.close()
    with ctx.record_writer() as writer:
        for b in range(256):
            path = buckets / f"{b:03d}.jsonl"
            for line in sorted(path.read_bytes().splitlines()):  # the hex key first: sorted as the digests
                writer.write(json.loads(line.split(b"\t", 1)[1]))
    shutil.rmtree(buckets)
    stats: dict[str, Any] = {f"input_{role}": len(scanned[role][0]) for role in roles}
    stats |= {f"taken_{role}": n for role, n in sizes.items()}
    stats["records"] = writer.rows
    return stats


KINDS = {"mix": Kind(MixConfig, mix, any_inputs=True, check_inputs=check_roles)}
