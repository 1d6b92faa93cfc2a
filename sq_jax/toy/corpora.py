"""The toy corpora as record sources, read by `sq_jax.data.sources` through the schemes registered here.

`procedural:COUNT[:SEED]`: the offline toy problems (the tiny default's seed set); `procedural-pairs:COUNT[:SEED]`:
toy preference pairs (solvable chosen, same scenario missing a quantity rejected); `procedural-rewrites:COUNT[:SEED]`:
chat SFT records teaching the tiny optimiser its rewrite.
"""

from __future__ import annotations

from collections.abc import Generator

from sq_jax.data.sources import DataError, Record, register_scheme
from sq_jax.toy.problems import iter_preference_pairs, iter_problems
from sq_jax.toy.rewrites import iter_rewrite_examples

__all__ = ["SCHEMES", "read_procedural", "register"]

SCHEMES = ("procedural", "procedural-pairs", "procedural-rewrites")


def read_procedural(spec: str) -> Generator[Record, None, None]:
    """The first COUNT records of the toy corpus `spec` names (`KIND:COUNT[:SEED]`, KIND one of `SCHEMES`)."""
    kind, *parts = spec.split(":")
    try:
        count, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        if len(parts) > 2 or count < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise DataError(f"{spec!r}: expected {kind}:COUNT[:SEED] with integers, COUNT >= 0") from None
    streams = {"procedural-pairs": iter_preference_pairs, "procedural-rewrites": iter_rewrite_examples}
    if kind in streams:
        for line, row in zip(range(1, count + 1), streams[kind](seed)):
            yield Record(row, spec, line)
        return
    for line, problem in zip(range(1, count + 1), iter_problems(seed)):
        yield Record(problem.to_record(), spec, line)


def register() -> None:
    """Make `sq_jax.data.sources` read the toy corpora's specs (idempotent)."""
    for scheme in SCHEMES:
        register_scheme(scheme, read_procedural)
