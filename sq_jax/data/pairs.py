"""Preference pairs (prompt, chosen, rejected) tokenized, validated and packed for DPO-style training.

A pair is two sequences, prompt + chosen and prompt + rejected, each its own segment (no attention between them),
packed next to each other so both sides of a pair are always in the same row and the same batch. Several pairs
may share a row (QPO questions are short); `max_pairs` fixes the number of pair slots per row so the loss has
static shapes. Slot j of a row holds segments 2j + 1 (chosen) and 2j + 2 (rejected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sq_jax.data.packing import assemble_row
from sq_jax.data.sources import Record

# encode(record data) -> (prompt ids, chosen ids, rejected ids), completions already ending in end-of-turn.
PairEncoder = Callable[[dict[str, Any]], "tuple[list[int], list[int], list[int]]"]


@dataclasses.dataclass
class PreferencePairs:
    prompts: list[np.ndarray]
    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    ids: list[str]
    stats: dict[str, int]
    max_pairs: int
    # Summed reference log-probs [pairs, 2] (chosen, rejected), once precomputed; None means online.
    reference_logps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def max_items(self) -> int:
        return self.max_pairs

    @property
    def batch_keys(self) -> tuple[str, ...]:
        keys = ("tokens", "positions", "segment_ids", "loss_mask", "example_index")
        return keys + (("reference_logps",) if self.reference_logps is not None else ())

    def lengths(self) -> list[int]:
        return [2 * len(p) + len(c) + len(r) for p, c, r in zip(self.prompts, self.chosen, self.rejected)]

    def sequences(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(tokens, loss mask) of the chosen then the rejected sequence: loss on the completion only."""
        prompt = self.prompts[index]
        out = []
        for completion in (self.chosen[index], self.rejected[index]):
            tokens = np.concatenate([prompt, completion])
            mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(completion), np.int32)])
            out.append((tokens, mask))
        return out

    def assemble(self, row: Sequence[int], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
        if len(row) > self.max_pairs:
            raise ValueError(f"row has {len(row)} pairs, more than max_pairs={self.max_pairs}")
        batch = assemble_row([seq for i in row for seq in self.sequences(i)], seq_len, pad_id)
        index = np.full(self.max_pairs, -1, np.int64)
        index[: len(row)] = row
        batch["example_index"] = index
        if self.reference_logps is not None:
            ref = np.zeros((self.max_pairs, 2), np.float32)
            ref[: len(row)] = self.reference_logps[list(row)]
            batch["reference_logps"] = ref
        return batch


def tokenize_pairs(
    records: Sequence[Record],
    encode: PairEncoder,
    max_length: int,
    overlong: str = "truncate",
    max_pairs: int = 8,
    row_length: int | None = None,
) -> PreferencePairs:
    """Encode every pair. Per sequence (prompt + completion) `max_length` applies, and a whole pair must fit in a
    row of `row_length` (default 2 x max_length): completions are cut, or the pair dropped, per `overlong`.
    Pairs with an empty side or identical sides teach nothing: dropped and counted.
    """
    row_length = row_length or 2 * max_length
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs_per_row must be >= 1, got {max_pairs}")
    stats = {"records": len(records), "truncated": 0, "dropped_overlong": 0, "dropped_empty_side": 0,
             "dropped_identical": 0}
    out = PreferencePairs([], [], [], [], stats, max_pairs)
    for record in records:
        data = record.data
        if not str(data["chosen"]).strip() or not str(data["rejected"]).strip():
            stats["dropped_empty_side"] += 1
            continue
        if str(data["chosen"]).strip() == str(data["rejected"]).strip():
            stats["dropped_identical"] += 1
            continue
        prompt, chosen, rejected = encode(data)
        room = max_length - len(prompt)
        if 2 * len(prompt) + len(chosen) + len(rejected) > row_length:
            room = min(room, (row_length - 2 * len(prompt)) // 2)
        if max(len(chosen), len(rejected)) > room:
            if overlong == "drop" or room < 1:
                stats["dropped_overlong"] += 1
                continue
            stats["truncated"] += 1
            chosen, rejected = chosen[:room], rejected[:room]
            if chosen == rejected:  # the difference was past the cut
                stats["dropped_identical"] += 1
                continue
        out.prompts.append(np.asarray(prompt, np.int32))
        out.chosen.append(np.asarray(chosen, np.int32))
        out.rejected.append(np.asarray(rejected, np.int32))
        out.ids.append(str(data.get("id", f"{record.source}:{record.line}")))
    stats["pairs"] = len(out)
    stats["examples"] = len(out)
    return out
