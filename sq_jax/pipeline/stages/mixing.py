"""The mix stage: question sets from several generators into one, by counts or ratios (SCALEQUEST.md section 5: the
paper's 1M is 400K questions of the DeepSeekMath generator and 600K of the Qwen2-Math one).

Each input is a role named in the stage's `inputs` (any names). Which records an input contributes is decided by a
hash of (seed, role, id), so the choice is deterministic under the pipeline seed, independent of the input's order,
and every chosen record appears exactly once; ids must be unique across the inputs. Each output record says which
input it came from (`source`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from typing import Any

from sq_jax.pipeline.stages import Kind, StageContext


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


def mix(ctx: StageContext, cfg: MixConfig) -> dict[str, Any]:
    check_roles(cfg, ctx.inputs)
    sets = {role: ctx.records(role) for role in sorted(ctx.inputs)}
    owner: dict[str, str] = {}
    for role, rows in sets.items():
        for r in rows:
            rid = str(r["id"])
            if rid in owner:
                raise ctx.error(f"id {rid!r} is in input {owner[rid]!r} and in {role!r}; ids must be unique "
                                "across the mixed inputs")
            owner[rid] = role
    sizes = mix_sizes(cfg, {role: len(rows) for role, rows in sets.items()})
    chosen = []
    for role, rows in sets.items():
        ranked = sorted(rows, key=lambda r: _rank(ctx.seed, role, str(r["id"])))
        chosen += [(_rank(ctx.seed, "", str(r["id"])), {**r, "source": role}) for r in ranked[: sizes[role]]]
    chosen.sort(key=lambda pair: pair[0])  # one seeded interleaving, so a prefix of the mix is a mix too
    stats: dict[str, Any] = {f"input_{role}": len(rows) for role, rows in sets.items()}
    stats |= {f"taken_{role}": n for role, n in sizes.items()}
    stats["records"] = ctx.write_records(r for _, r in chosen)
    return stats


KINDS = {"mix": Kind(MixConfig, mix, any_inputs=True, check_inputs=check_roles)}
