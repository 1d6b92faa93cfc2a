"""Collective, resumable scoring of a set's parts: every process scores its own parts on its own chips.

Part k of the input goes to process k mod P; its scores land in `<folder>/part-NNNNN.npz` (written atomically
once the whole part is scored), so a killed stage resumes at the first unscored part and a rerun scores nothing
twice. Rows are read, rendered and tokenised `chunk` rows at a time (token ids as numpy arrays), so a host holds
one chunk, never the set. A part is scored in the same chunks and packed rows whichever process scores it, so
the scores do not depend on the process count or on where a run was killed: they are bit-identical between runs
with as many chips per process (every host of a slice has the same); a scorer sharded over fewer chips adds in
another order and differs in float32's last bit (~1e-7).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from sq_jax.data.dataset import atomic_open, iter_part, read_json, write_json_atomic
from sq_jax.parallel.distributed import sync
from sq_jax.pipeline.memory import release_free_heap

Encode = Callable[[list[dict[str, Any]]], list[np.ndarray]]  # rows -> token ids of each


def scores_path(folder: Path, index: int) -> Path:
    return folder / f"part-{index:05d}.npz"


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_part(part: Path, encode: Encode, score: Callable[[Sequence[np.ndarray]], np.ndarray], *,
               chunk: int, on_rows: Callable[[int], None] = lambda n: None) -> dict[str, np.ndarray]:
    """{scores, lengths} of one part's rows, in row order (lengths before the scorer cuts any)."""
    scores, lengths = [], []
    for rows in _chunks(iter_part(part), chunk):
        ids = encode(rows)
        lengths.append(np.asarray([len(t) for t in ids], np.int32))
        scores.append(score(ids))
        on_rows(len(rows))
    empty = np.zeros(0, np.float32)
    return {"scores": np.concatenate(scores) if scores else empty,
            "lengths": np.concatenate(lengths) if lengths else empty.astype(np.int32)}


def score_parts(parts: Sequence[Path], folder: Path, encode: Encode,
                score: Callable[[Sequence[np.ndarray]], np.ndarray], *, collective: bool, chunk: int = 4096,
                part_rows: Sequence[int] | None = None, desc: str = "score") -> dict[str, Any]:
    """Score this process's share of `parts` into `folder` (skipping parts scored before); returns stats.

    Ends at a barrier when `collective`, so every part is scored when any process returns."""
    processes, index = (jax.process_count(), jax.process_index()) if collective else (1, 0)
    folder.mkdir(parents=True, exist_ok=True)
    mine = [k for k in range(len(parts)) if k % processes == index]
    todo = [k for k in mine if not scores_path(folder, k).is_file()]
    total = sum(part_rows[k] for k in todo) if part_rows is not None else None
    bar = tqdm(total=total, desc=f"{desc} (process {index}'s parts)", unit="row", disable=index != 0)
    started, scored = time.perf_counter(), 0

    def progress(n: int) -> None:
        nonlocal scored
        scored += n
        bar.update(n)
        bar.set_postfix(rows_s=f"{scored / max(time.perf_counter() - started, 1e-9):,.0f}")

    log_path = folder / f"_process{index}.json"  # which parts this process scored, over all its runs
    scored_parts = read_json(log_path).get("scored", [])
    release_free_heap()  # what loading the model left free, before the first part
    for k in todo:
        result = score_part(parts[k], encode, score, chunk=chunk, on_rows=progress)
        with atomic_open(scores_path(folder, k), "wb") as f:
            np.savez(f, **result)
        scored_parts.append(k)
        write_json_atomic(log_path, {"process": index, "processes": processes, "scored": scored_parts})
        del result
        release_free_heap()  # the part's text, token ids and packed rows are freed: give their heap back
    bar.close()
    seconds = time.perf_counter() - started
    if collective:
        sync(f"scored:{folder}")
    return {"parts": len(parts), "parts_scored_here": len(todo), "parts_resumed": len(mine) - len(todo),
            "rows_scored_here": scored, "rows_per_s_here": round(scored / max(seconds, 1e-9), 1)}


def load_scores(folder: Path, num_parts: int) -> Iterator[dict[str, np.ndarray]]:
    """The scores of parts 0..num_parts-1, one part at a time."""
    for k in range(num_parts):
        path = scores_path(folder, k)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: part {k} was never scored (a process failed before finishing it)")
        with np.load(path) as data:
            yield {name: data[name] for name in data.files}
