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
    return process_shares(records)[0]


def process_shares(records: Sequence[Record], shares: int | None = None) -> list[list[Record]]:
    """This process's data shares: the records dealt round robin into `shares` (default one per process), and
    process p holding shares p*k .. p*k+k-1 for k = shares / processes. Fixing `shares` fixes every batch whatever
    the number of processes (see `PackedBatches`)."""
    processes, index = jax.process_count(), jax.process_index()
    shares = shares or processes
    if shares % processes:
        raise ValueError(f"data.shares={shares} is not a multiple of the {processes} processes")
    per = shares // processes
    return [list(records[s::shares]) for s in range(index * per, (index + 1) * per)]


def concat_examples(parts: Sequence[Any]) -> Any:
    """Tokenized example sets (one dataclass type) as one: list fields joined, stats summed, the rest equal."""
    if len(parts) == 1:
        return parts[0]
    values = {}
    for field in dataclasses.fields(parts[0]):
        got = [getattr(p, field.name) for p in parts]
        if isinstance(got[0], list):
            values[field.name] = [x for g in got for x in g]
        elif isinstance(got[0], dict):
            values[field.name] = {k: sum(g.get(k, 0) for g in got) for k in got[0]}
        elif all(g is None for g in got) or all(g == got[0] for g in got):
            values[field.name] = got[0]
        else:
            raise ValueError(f"cannot join example sets that differ in {field.name!r}: {got}")
    return type(parts[0])(**values)


class PackedBatches:
    """Epochs of shuffled, packed rows of one host, batched `rows_per_batch` at a time by grain.

    `groups` splits the examples into data shares (lists of example indices), each shuffled and packed on its own
    with the same seed and given an equal part of every batch: share j fills the same rows of batch b whichever
    process holds it, so one process holding shares 0 and 1 trains on exactly the batches two processes holding
    one share each do.
    """

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
        groups: Sequence[Sequence[int]] | None = None,
    ):
        if len(examples) == 0:
            raise ValueError("no training examples left after tokenization (see the tokenization stats)")
        groups = [list(range(len(examples)))] if groups is None else [list(g) for g in groups]
        if rows_per_batch % len(groups):
            raise ValueError(f"{rows_per_batch} rows per batch do not split evenly over {len(groups)} data shares")
        per_group = rows_per_batch // len(groups)
        self.examples = examples
        self.seq_len = seq_len
        self.pad_id = pad_id
        lengths = examples.lengths()
        planned = [self._plan(lengths, g, epochs, seed, shuffle, open_bins, examples.max_items) for g in groups]
        num_batches = min(len(rows) // per_group for rows in planned)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        if num_batches == 0:
            raise ValueError(
                f"{min(map(len, planned))} packed rows of {seq_len} tokens do not fill one batch of {per_group} "
                "rows; lower the batch size or the sequence length"
            )
        # Batch b is share 0's rows b*per_group.., then share 1's, ...: grain's batching keeps that order.
        self.rows = [row for b in range(num_batches) for rows in planned
                     for row in rows[b * per_group : (b + 1) * per_group]]
        packed = sum(len(rows) for rows in planned)
        self.stats = {
            "packed_rows": packed,
            "rows_dropped_partial_batch": packed - len(self.rows),
            "fill_rate": float(sum(lengths[i] for rows in planned for r in rows for i in r)) / (packed * seq_len),
        }
        self.num_batches = num_batches
        self.dataset = grain.MapDataset.source(self.rows).map(self._assemble).batch(rows_per_batch)

    def _plan(self, lengths: Sequence[int], group: list[int], epochs: int, seed: int, shuffle: bool,
              open_bins: int, max_items: int | None) -> list[list[int]]:
        """Packed rows (example indices) of one data share over all epochs."""
        local = [lengths[i] for i in group]
        rows: list[list[int]] = []
        for epoch in range(epochs):
            order = grain.MapDataset.range(len(local))
            if shuffle:
                order = order.shuffle(seed=seed + epoch)
            plan = plan_packing(local, list(order), self.seq_len, open_bins, max_items)
            rows.extend([group[i] for i in row] for row in plan)
        return rows

    def _assemble(self, row: list[int]) -> dict[str, np.ndarray]:
        return self.examples.assemble(row, self.seq_len, self.pad_id)

    def __len__(self) -> int:
        return self.num_batches

    def iterator(self, state: dict[str, Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
        it = iter(self.dataset)
        if state is not None:
            it.set_state(state)
        return it
