"""The QPO-data stage's core: an optimiser LLM rewrites generated questions; pair = (chosen: rewrite, rejected:
original). The prompts and the reply parser are `sq_jax.prompts.optimiser`; the backends `chat_backends`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sq_jax.pipeline.chat_backends import ChatBackend, ChatRequest
from sq_jax.prompts.optimiser import (
    DIRECTIONS, check_directions, choose_direction, optimiser_messages, parse_final_question,
)

__all__ = ["optimise"]

log = logging.getLogger(__name__)


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def optimise(
    records: Sequence[dict], backend: ChatBackend, *, seed: int, question_field: str = "question",
    id_field: str = "id", directions: Sequence[str] = DIRECTIONS,
) -> tuple[list[dict], dict[str, int]]:
    """Rewrite every record's question; preference pairs (chosen = rewrite, rejected = original) and counters.

    Each question goes one of `directions` (the paper: both, half each), chosen per question by `choose_direction`.

    Every input id ends in exactly one of: `pairs`, `errors`, `dropped_truncated` (the reply hit max_tokens: its
    final question may be cut, so it is never a chosen side), `dropped_unparsable`, `dropped_unchanged`.
    """
    allowed = check_directions(directions)
    requests, originals, picked = [], [], []
    seen: set[str] = set()
    for index, record in enumerate(records):
        if id_field not in record or question_field not in record:
            raise ValueError(f"optimise: record {index} lacks the {id_field!r} or {question_field!r} field; "
                             f"it has {sorted(record)}")
        rid, question = str(record[id_field]), record[question_field]
        if not isinstance(question, str):
            raise ValueError(f"optimise: record {rid!r}: {question_field!r} must be a string, "
                             f"got {type(question).__name__}")
        if rid in seen:
            raise ValueError(f"optimise: duplicate id {rid!r} (record {index}); ids must be unique")
        seen.add(rid)
        direction = choose_direction(rid, seed, allowed)
        requests.append(ChatRequest(rid, optimiser_messages(question, direction)))
        originals.append(question)
        picked.append(direction)
    stats = {name: 0 for name in ("requests", "cached", "errors", "dropped_truncated", "dropped_unparsable",
                                  "dropped_unchanged", "pairs")}
    stats |= {f"{kind}_{d}": 0 for kind in ("requests", "pairs") for d in DIRECTIONS}
    results = backend.complete(requests)
    if [r.id for r in results] != [r.id for r in requests]:
        raise RuntimeError(f"optimise: backend {type(backend).__name__} returned results for other ids or in "
                           "another order than the requests")
    pairs, examples = [], []
    for request, original, direction, result in zip(requests, originals, picked, results):
        stats["requests"] += 1
        stats[f"requests_{direction}"] += 1
        stats["cached"] += result.cached
        if result.text is None:
            stats["errors"] += 1
            examples.append(f"{request.id}: {result.error}")
            continue
        if result.finish_reason == "length":
            stats["dropped_truncated"] += 1
            continue
        rewrite = parse_final_question(result.text)
        if rewrite is None:
            stats["dropped_unparsable"] += 1
        elif _normalise(rewrite) == _normalise(original):
            stats["dropped_unchanged"] += 1  # no preference signal in a pair of equal questions
        else:
            stats["pairs"] += 1
            stats[f"pairs_{direction}"] += 1
            pairs.append({"id": request.id, "chosen": rewrite, "rejected": original, "direction": direction,
                          "optimiser_reply": result.text})
    if examples:
        log.warning("optimise: %d of %d requests failed, e.g. %s", len(examples), len(requests),
                    "; ".join(examples[:3]))
    return pairs, stats
