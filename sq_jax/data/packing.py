"""Packing variable-length examples into fixed-length rows: a pure plan over lengths, then row assembly.

The plan is computed once from token lengths, so the number of rows (and hence training steps) is known before
training starts, and a row is reproducible from (plan, row index) alone: resuming needs only a row counter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_packing(
    lengths: Sequence[int], order: Sequence[int], seq_len: int, open_bins: int = 16, max_items: int | None = None
) -> list[list[int]]:
    """Group example indices (visited in `order`) into rows of total length <= `seq_len` (and at most
    `max_items` examples, when a consumer has a static number of slots per row).

    First fit over a window of `open_bins` partially filled rows: near-optimal fill while keeping the shuffled
    order roughly intact (a row is closed once it is the oldest of too many open ones). Every index in `order`
    lands in exactly one row; an example longer than `seq_len` is an error (truncate or drop it before).
    """
    if seq_len < 1 or open_bins < 1 or (max_items is not None and max_items < 1):
        raise ValueError(f"seq_len, open_bins and max_items must be >= 1, got {seq_len}, {open_bins}, {max_items}")
    cap = max_items or seq_len
    rows: list[list[int]] = []
    bins: list[tuple[int, list[int]]] = []  # (free space, example indices), oldest first
    for index in order:
        n = int(lengths[index])
        if n > seq_len:
            raise ValueError(f"example {index} has {n} tokens, more than the row length {seq_len}")
        if n == 0:
            raise ValueError(f"example {index} is empty")
        for b, (free, members) in enumerate(bins):
            if n <= free:
                members.append(int(index))
                bins[b] = (free - n, members)
                if free - n == 0 or len(members) == cap:
                    rows.append(bins.pop(b)[1])
                break
        else:
            if n == seq_len or cap == 1:
                rows.append([int(index)])
                continue
            if len(bins) == open_bins:
                rows.append(bins.pop(0)[1])
            bins.append((seq_len - n, [int(index)]))
    rows.extend(members for _, members in bins)
    return rows


def assemble_row(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One packed row from (tokens, loss_mask) pairs: segment ids 1..k, positions restarting per example.

    Padding has segment id 0 and loss mask 0. Targets are not stored: the loss shifts within a segment.
    """
    tokens = np.full(seq_len, pad_id, np.int32)
    loss_mask = np.zeros(seq_len, np.int32)
    segment_ids = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    offset = 0
    for segment, (ex_tokens, ex_mask) in enumerate(examples, start=1):
        n = len(ex_tokens)
        if offset + n > seq_len:
            raise ValueError(f"examples do not fit in a row of {seq_len} tokens")
        tokens[offset : offset + n] = ex_tokens
        loss_mask[offset : offset + n] = ex_mask
        segment_ids[offset : offset + n] = segment
        positions[offset : offset + n] = np.arange(n)
        offset += n
    return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}
