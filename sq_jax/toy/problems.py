"""Offline, deterministic grade-school math word problems with known answers, and toy preference pairs.

They are the seed data of the tiny default pipeline (no third-party data ships with the repo) and the ground truth
for solvability and difficulty: ``steps`` counts the arithmetic operations.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from sq_jax.toy.templates import BUILDERS, MAX_STEPS, TEMPLATES, Build

__all__ = ["TEMPLATES", "ToyProblem", "generate_problems", "iter_preference_pairs", "iter_problems", "make_problem"]


@dataclass(frozen=True)
class ToyProblem:
    """One word problem. Unsolvable ones have ``answer == -1`` and no boxed answer."""

    id: str
    question: str
    answer: int
    solution: str
    steps: int
    template: str
    solvable: bool

    def to_record(self) -> dict[str, str | int | bool]:
        """Plain JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)


def make_problem(seed: int, index: int, min_steps: int, max_steps: int, frac: float) -> ToyProblem:
    # RNGs keyed by (seed, index) make problem i independent of how many are drawn; a separate
    # one for the drop decision keeps the scenario the same whatever the fraction.
    r = random.Random(f"sq_jax.toy/{seed}/{index}")
    drop = random.Random(f"sq_jax.toy.drop/{seed}/{index}").random() < frac
    steps = r.randint(min_steps, max_steps)
    name, (build, _, _) = r.choice([(k, t) for k, t in BUILDERS.items() if t[1] <= steps <= t[2]])
    b = Build(drop)
    question = build(r, steps, b)
    if len(b.lines) != steps or b.missing is None:
        raise RuntimeError(f"template {name!r} broke its contract")
    answer = -1 if drop else b.result
    solution = (f"Information is missing: the question does not say {b.missing}, so the answer "
                "cannot be determined." if drop else
                " ".join(b.lines) + f" The answer is \\boxed{{{answer}}}.")
    return ToyProblem(id=f"toy-s{seed}-{index:06d}", question=question, answer=answer,
                      solution=solution, steps=steps, template=name, solvable=not drop)


def iter_problems(seed: int = 0, *, min_steps: int = 1, max_steps: int = 4,
                  unsolvable_fraction: float = 0.0) -> Iterator[ToyProblem]:
    """Endless deterministic stream of problems; arguments are checked on call, not on next()."""
    for bad, msg in [(min_steps < 1, f"min_steps must be >= 1, got {min_steps}"),
                     (min_steps > max_steps, f"min_steps {min_steps} > max_steps {max_steps}"),
                     (max_steps > MAX_STEPS, f"max_steps must be <= {MAX_STEPS}"),
                     (not 0.0 <= unsolvable_fraction <= 1.0,
                      f"unsolvable_fraction must be in [0, 1], got {unsolvable_fraction}")]:
        if bad:
            raise ValueError(msg)
    return (make_problem(seed, i, min_steps, max_steps, unsolvable_fraction) for i in itertools.count())


def generate_problems(n: int, seed: int = 0, *, min_steps: int = 1, max_steps: int = 4,
                      unsolvable_fraction: float = 0.0) -> list[ToyProblem]:
    """The first n problems of ``iter_problems(seed, ...)``; prefixes agree across n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = iter_problems(seed, min_steps=min_steps, max_steps=max_steps,
                           unsolvable_fraction=unsolvable_fraction)
    return list(itertools.islice(stream, n))


def iter_preference_pairs(seed: int = 0, *, min_steps: int = 1, max_steps: int = 4) -> Iterator[dict[str, str]]:
    """Endless toy QPO pairs in the solvability direction: chosen is a problem, rejected is the same scenario
    with one needed quantity left out (what the optimiser is asked to repair). No prompt: QPO uses the model's
    pre-query template."""
    for i in itertools.count():
        good = make_problem(seed, i, min_steps, max_steps, 0.0)
        bad = make_problem(seed, i, min_steps, max_steps, 1.0)
        yield {"id": f"toy-pair-s{seed}-{i:06d}", "chosen": good.question, "rejected": bad.question}
