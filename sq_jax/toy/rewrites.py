"""Toy optimiser SFT data: chat requests exactly as the QPO-data stage sends them, with replies in its format.

The tiny default cannot call a real optimiser LLM, so its optimiser is the tiny model fine-tuned on these: the
solvability request for a procedural question that leaves out one needed quantity, answered with a one-line
analysis naming what is missing and, under `### Final Question`, the same scenario with the quantity stated.
About a third of the requests hold an already solvable question, answered with the question unchanged, so the
model also learns to keep good questions (the optimise stage then drops them as unchanged, and counts them).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from typing import Any

from sq_jax.prompts.optimiser import optimiser_messages
from sq_jax.toy.problems import make_problem

__all__ = ["KEEP_ANALYSIS", "KEEP_FRACTION", "iter_rewrite_examples", "rewrite_reply"]

KEEP_FRACTION = 1 / 3
KEEP_ANALYSIS = "Every check passes: the question states all it needs, so it stays as it is."
_MISSING_FALLBACK = "Information is missing: a quantity needed to answer it is not stated."
# An unsolvable ToyProblem's solution names what it leaves out; reusing its words keeps the analysis short in
# the tiny tokenizer, which was trained on those solutions.
_MISSING = re.compile(r"^Information is missing: the question does not say (.+?), so the answer cannot be")


def rewrite_reply(analysis: str, question: str) -> str:
    """An optimiser reply in the format the QPO-data stage parses (see `sq_jax.prompts.optimiser.parse_final_question`)."""
    return f"### Analysis\n{analysis}\n\n### Final Question\n{question}"


def _missing_analysis(solution: str) -> str:
    found = _MISSING.match(solution)
    return f"Information is missing: the question does not say {found.group(1)}." if found else _MISSING_FALLBACK


def iter_rewrite_examples(seed: int = 0, *, min_steps: int = 1, max_steps: int = 4) -> Iterator[dict[str, Any]]:
    """Endless deterministic SFT records {id, messages, response} teaching the solvability rewrite."""
    for i in itertools.count():
        good = make_problem(seed, i, min_steps, max_steps, 0.0)
        # Keyed by (seed, index) like the problems themselves, so record i never depends on how many are drawn.
        keep = random.Random(f"sq_jax.toy.rewrite/{seed}/{i}").random() < KEEP_FRACTION
        if keep:
            question, analysis = good.question, KEEP_ANALYSIS
        else:
            bad = make_problem(seed, i, min_steps, max_steps, 1.0)
            question, analysis = bad.question, _missing_analysis(bad.solution)
        yield {"id": f"toy-rewrite-s{seed}-{i:06d}", "messages": optimiser_messages(question, "solvability"),
               "response": rewrite_reply(analysis, good.question)}
