"""The dataset export: JSONL and Parquet shards, a `datasets` dataset on disk, its card, a copy or a hub push."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

from sq_jax.data.dataset import atomic_open
from sq_jax.data.remote import upload
from sq_jax.data.sources import write_jsonl
from sq_jax.pipeline.report_markdown import report_markdown
from sq_jax.pipeline.stages.base import Kind, StageContext


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    name: str = "sq-jax-synthetic-math"
    push_to_hub: str | None = None  # a repo id; pushed when HF_TOKEN is set
    shard_rows: int = 100_000
    copy_to: str | None = None  # a folder or URL (gs://bucket/path, any fsspec filesystem) receiving a copy


EXPORT_COLUMNS = ("query", "response", "id", "answer", "reward", "majority_answer", "majority_share",
                  "num_responses")


def _export_row(r: dict[str, Any]) -> dict[str, Any]:
    return {c: (json.dumps(r.get(c)) if c == "answer" and isinstance(r.get(c), list) else r.get(c))
            for c in EXPORT_COLUMNS}


def _write_shards(ctx: StageContext, rows: Iterator[dict[str, Any]], shard_rows: int) -> tuple[int, list[str]]:
    """`data/train-NNNNN.{jsonl,parquet}`, `shard_rows` rows each, one shard in memory at a time."""
    import pyarrow as pa  # heavy, like `datasets` in `export`: loaded by this stage alone
    import pyarrow.parquet as pq

    schema = pa.schema([("query", pa.string()), ("response", pa.string()), ("id", pa.string()),
                        ("answer", pa.string()), ("reward", pa.float64()), ("majority_answer", pa.string()),
                        ("majority_share", pa.float64()), ("num_responses", pa.int64())])
    total, parquet = 0, []
    for k, shard in enumerate(iter(lambda: list(itertools.islice(rows, shard_rows)), [])):
        table = [_export_row(r) for r in shard]
        write_jsonl(ctx.dir / "data" / f"train-{k:05d}.jsonl", table)
        path = ctx.dir / "data" / f"train-{k:05d}.parquet"
        with atomic_open(path, "wb") as f:
            pq.write_table(pa.Table.from_pylist(table, schema=schema), f)
        parquet.append(str(path))
        total += len(table)
    return total, parquet


def export(ctx: StageContext, cfg: ExportConfig) -> dict[str, Any]:
    """A `datasets` dataset on disk (query, response + provenance), JSONL and Parquet shards, and a dataset card.
    Streams: the shards are written one at a time, and the dataset is built from the Parquet shards (memory-mapped
    Arrow, not rows in Python)."""
    import datasets  # heavy (pandas, pyarrow, fsspec): only the export stage needs it

    total, parquet = _write_shards(ctx, ctx.iter_records("data"), cfg.shard_rows)
    if not parquet:
        raise ctx.error("the input has no records to export")
    dataset = datasets.Dataset.from_parquet(parquet, keep_in_memory=False)
    dataset.save_to_disk(str(ctx.dir / "dataset"))
    report = json.loads((ctx.output_dir / "report.json").read_text()) if (ctx.output_dir / "report.json").exists() \
        else None
    card = [f"# {cfg.name}", "", "Math questions synthesised from scratch with sq-jax (ScaleQuest, arXiv "
            "2410.18693), filtered, answered and reward-ranked.", "", f"Rows: {total}. Columns: "
            + ", ".join(f"`{c}`" for c in EXPORT_COLUMNS) + ".", ""]
    if report:
        card += ["## Run report (stages before the export)", "", report_markdown(report)]
    (ctx.dir / "README.md").write_text("\n".join(card) + "\n")
    pushed = None
    if cfg.push_to_hub and os.environ.get("HF_TOKEN"):
        dataset.push_to_hub(cfg.push_to_hub, token=os.environ["HF_TOKEN"])
        pushed = cfg.push_to_hub
    copied = None
    if cfg.copy_to:  # the dataset folder, the JSONL/Parquet shards and the card, as laid out here
        for name in ("dataset", "data", "README.md"):
            upload(ctx.dir / name, f"{cfg.copy_to.rstrip('/')}/{name}")
        copied = cfg.copy_to
    ctx.write_records(ctx.iter_records("data"))
    return {"rows": total, "shards": len(parquet), "pushed_to": pushed, "copied_to": copied}


KINDS = {"export": Kind(ExportConfig, export, required_inputs=("data",))}
