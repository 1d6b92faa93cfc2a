"""Training data: records -> tokenized examples (with counted truncation/drops) -> packed rows -> grain batches.

Each host tokenizes only its own share of the records and packs it; the example order of every epoch comes from
grain's seeded index shuffle, so the stream is a pure function of (records, seed) and its grain iterator state
(a row counter) is all a checkpoint needs to resume at the exact next example.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np

from sq_jax.data.packing import assemble_row, plan_packing
from sq_jax.data.sources import Record

log = logging.getLogger(__name__)

# encode(record) -> (tokens, loss_mask) or None when the record has nothing to learn from.
Encoder = Callable[[dict[str, Any]], "tuple[list[int], list[int]] | None"]


@dataclasses.dataclass
class TokenizedExamples:
    """Single sequences, packed several to a row. (Preference pairs have their own class with the same surface:
    `lengths`, `assemble`, `max_items`, `batch_keys`.)"""

    tokens: list[np.ndarray]
    loss_masks: list[np.ndarray]
    ids: list[str]
    stats: dict[str, int]
    max_items: int | None = None  # no cap on examples per row
    batch_keys: tuple[str, ...] = ("tokens", "positions", "segment_ids", "loss_mask")

    def __len__(self) -> int:
        return len(self.tokens)

    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def assemble(self, row: Sequence[int], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
        return materialize_row(self, row, seq_len, pad_id)


def tokenize_records(
    records: Sequence[Record], encode: Encoder, max_length: int, overlong: str = "truncate"
) -> TokenizedExamples:
    """Encode every record; examples over `max_length` are truncated or dropped per `overlong`, and counted."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    out = TokenizedExamples([], [], [], {"records": len(records), "truncated": 0, "dropped_overlong": 0,
                                         "dropped_no_loss": 0})
    for record in records:
        encoded = encode(record.data)
        tokens, mask = (encoded or ([], []))
        if len(tokens) > max_length:
            if overlong == "drop":
                out.stats["dropped_overlong"] += 1
                continue
            out.stats["truncated"] += 1
            tokens, mask = tokens[:max_length], mask[:max_length]
        # Only the first token of an example has no prediction; an example needs a weighted token after it.
        if len(tokens) < 2 or not any(mask[1:]):
            out.stats["dropped_no_loss"] += 1
            continue
        out.tokens.append(np.asarray(tokens, np.int32))
        out.loss_masks.append(np.asarray(mask, np.int32))
        out.ids.append(str(record.data.get("id", f"{record.source}:{record.line}")))
    out.stats["examples"] = len(out.tokens)
    return out


def materialize_row(examples: TokenizedExamples, row: Sequence[int], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """The packed arrays of one planned row, plus its example indices (-1 padded) for data-order audits."""
    batch = assemble_row([(examples.tokens[i], examples.loss_masks[i]) for i in row], seq_len, pad_id)
    ids = np.full(seq_len, -1, np.int64)
    ids[: len(row)] = row
    batch["example_index"] = ids
    return batch


def eval_rows(examples: Any, seq_len: int, rows_per_batch: int, pad_id: int = 0):
    """All examples packed in order, in batches of `rows_per_batch`; the last batch padded with empty rows."""
    lengths = examples.lengths()
    rows = plan_packing(lengths, range(len(lengths)), seq_len, max_items=examples.max_items)
    rows += [[]] * (-len(rows) % rows_per_batch)
    for start in range(0, len(rows), rows_per_batch):
        chunk = [examples.assemble(r, seq_len, pad_id) for r in rows[start : start + rows_per_batch]]
        yield {k: np.stack([c[k] for c in chunk]) for k in chunk[0]}


def eval_batches(examples: Any, seq_len: int, rows_per_batch: int, pad_id: int,
                 agree: Callable[[int], int] = lambda n: n) -> Iterator[dict[str, np.ndarray]]:
    """`eval_rows`, then all-padding batches (no loss, no pairs) up to `agree(number of batches)`: every host
    must run as many batches as the host with the most (hosts hold different shares)."""
    batches = list(eval_rows(examples, seq_len, rows_per_batch, pad_id))
    blank = examples.assemble([], seq_len, pad_id)
    empty = {k: np.stack([v] * rows_per_batch) for k, v in blank.items()}
    for i in range(agree(len(batches))):
        yield batches[i] if i < len(batches) else empty


def host_shard(records: Sequence[Record]) -> list[Record]:
    """This process's disjoint share of the records (round robin, so shares differ by at most one)."""
    return list(records[jax.process_index() :: jax.process_count()])


class PackedBatches:
    """Epochs of shuffled, packed rows of one host, batched `rows_per_batch` at a time by grain."""

    def __init__(
        self,
        examples: Any,  # TokenizedExamples or PreferencePairs
        *,
        seq_len: int,
        rows_per_batch: int,
        epochs: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        open_bins: int = 16,
        pad_id: int = 0,
        max_batches: int | None = None,
    ):
        if len(examples) == 0:
            raise ValueError("no training examples left after tokenization (see the tokenization stats)")
        self.examples = examples
        self.seq_len = seq_len
        self.pad_id = pad_id
        lengths = examples.lengths()
        rows: list[list[int]] = []
        for epoch in range(epochs):
            order = grain.MapDataset.range(len(lengths))
            if shuffle:
                order = order.shuffle(seed=seed + epoch)
            rows.extend(plan_packing(lengths, list(order), seq_len, open_bins, examples.max_items))
        num_batches = len(rows) // rows_per_batch
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        if num_batches == 0:
            raise ValueError(
                f"{len(rows)} packed rows of {seq_len} tokens do not fill one batch of {rows_per_batch} rows; "
                "lower the batch size or the sequence length"
            )
        self.rows = rows[: num_batches * rows_per_batch]
        self.stats = {
            "packed_rows": len(rows),
            "rows_dropped_partial_batch": len(rows) - len(self.rows),
            "fill_rate": float(sum(lengths[i] for r in rows for i in r)) / (len(rows) * seq_len),
        }
        self.num_batches = num_batches
        self.dataset = grain.MapDataset.source(self.rows).map(self._assemble).batch(rows_per_batch)

    def _assemble(self, row: list[int]) -> dict[str, np.ndarray]:
        return self.examples.assemble(row, self.seq_len, self.pad_id)

    def __len__(self) -> int:
        return self.num_batches

    def iterator(self, state: dict[str, Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
        it = iter(self.dataset)
        if state is not None:
            it.set_state(state)
        return it
