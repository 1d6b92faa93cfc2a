"""Read training / pipeline records from JSONL, Parquet, `save_to_disk` folders or the Hugging Face hub.

Every record keeps its provenance (file or hub id, 1-based line) so that any later error, here or
downstream, can point the user at the offending input row instead of at an anonymous index.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sq_jax.data.dataset import write_part
from sq_jax.data.remote import fetched, is_url

__all__ = ["DataError", "Record", "SchemeReader", "read_records", "register_scheme", "stream_records",
           "write_jsonl"]

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SHARD_SUFFIXES = (".jsonl", ".parquet")  # `.json` is left out of shards: folders often hold JSON metadata
_PARQUET_BATCH = 1024


class DataError(ValueError):
    """Bad or missing input data; the message names the file, line and field when known."""


@dataclass(frozen=True)
class Record:
    """One input row with its provenance."""

    data: dict[str, Any]
    source: str  # file path, or hub id + split
    line: int  # 1-based line (JSONL) or row index + 1 (Parquet, datasets)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# Readers of specs `SCHEME:...` that other packages name their corpora with (the toy world's `procedural:`): the
# generic reader knows none of them; a package registers its own (`sq_jax.toy` does when imported).
SchemeReader = Callable[[str], Iterator[Record]]
_SCHEMES: dict[str, SchemeReader] = {}
_BUILT_IN_SCHEMES = ("hf",)


def register_scheme(scheme: str, reader: SchemeReader) -> None:
    """Read every spec `SCHEME:...` with `reader(spec)`, a generator of Records that name the spec as their source
    (its errors, DataError, raised on iteration like a file's). Registering a scheme again replaces its reader."""
    if scheme in _BUILT_IN_SCHEMES or not scheme.replace("-", "").isalnum():
        raise ValueError(f"source scheme {scheme!r}: expected letters, digits and '-', other than {_BUILT_IN_SCHEMES}")
    _SCHEMES[scheme] = reader


def _registered_reader(spec: str) -> SchemeReader | None:
    scheme, colon, _ = spec.partition(":")
    return _SCHEMES.get(scheme) if colon else None


def _iter_jsonl(path: Path) -> Generator[Record, None, None]:
    source = str(path)
    # Binary + per-line decoding so that bad UTF-8 is also reported with its line number.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{source}:{lineno}: not valid UTF-8 ({e})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                hint = ""
                if lineno == 1 and text.lstrip().startswith("["):
                    hint = " (expected JSON lines, one object per line; this looks like a JSON array)"
                raise DataError(f"{source}:{lineno}: malformed JSON: {e}{hint}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{source}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield Record(obj, source, lineno)


def _iter_parquet(path: Path, limit: int | None) -> Generator[Record, None, None]:
    # Heavy, and needed only for Parquet: imported when a Parquet file is read.
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{source}: cannot read Parquet file: {e}") from None
    # Batches keep memory bounded and let `limit` stop without decoding the whole file.
    batch_size = min(limit, _PARQUET_BATCH) if limit else _PARQUET_BATCH
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for obj in batch.to_pylist():
            row += 1
            yield Record(obj, source, row)


def _iter_dataset(ds: Any, source: str) -> Generator[Record, None, None]:
    for i, obj in enumerate(ds):
        yield Record(dict(obj), source, i + 1)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _iter_saved(path: Path, split: str) -> Generator[Record, None, None]:
    import datasets  # heavy (seconds): only for `save_to_disk` folders and the hub

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several unrelated types for corrupt folders
        raise DataError(f"{path}: cannot load dataset saved with save_to_disk: {e}") from e
    source = str(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; available splits: {sorted(ds)}")
        ds, source = ds[split], f"{path}[{split}]"
    return _iter_dataset(ds, source)


def _iter_hub(name: str, config: str | None, split: str) -> Generator[Record, None, None]:
    import datasets  # heavy (seconds): only for `save_to_disk` folders and the hub

    label = f"hf:{name}" + (f":{config}" if config else "")
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, auth, missing config/split: all mean "cannot read this spec"
        raise DataError(f"{label}: cannot load split {split!r} from the Hugging Face hub: {e}") from e
    return _iter_dataset(ds, f"{label}[{split}]")


def _iter_file(path: Path, limit: int | None) -> Generator[Record, None, None]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _iter_jsonl(path)
    if suffix in PARQUET_SUFFIXES:
        return _iter_parquet(path, limit)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected .jsonl, .json or .parquet")


def _iter_dir(path: Path, split: str, limit: int | None) -> Generator[Record, None, None]:
    if _is_saved_dataset(path):
        yield from _iter_saved(path, split)
        return
    shards = sorted(
        p for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in SHARD_SUFFIXES and not p.name.startswith(("_", "."))
    )
    for shard in shards:
        yield from _iter_file(shard, limit)


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec or spec.lower().endswith(
        JSONL_SUFFIXES + PARQUET_SUFFIXES
    )


def _iter_url(url: str, split: str, limit: int | None) -> Generator[Record, None, None]:
    """A file or folder behind a URL (gs://...): fetched, read like a local one, sources named by the URL."""
    with fetched(url) as local:
        inner = _iter_dir(local, split, limit) if local.is_dir() else _iter_file(local, limit)
        try:
            with closing(inner):
                for rec in inner:
                    yield Record(rec.data, url.rstrip("/") + rec.source[len(str(local)):], rec.line)
        except DataError as e:  # name the URL, not the temporary copy
            raise DataError(str(e).replace(str(local), url.rstrip("/"))) from None


def _iter_spec(spec: str | Path, split: str, limit: int | None) -> Generator[Record, None, None]:
    reader = _registered_reader(spec) if isinstance(spec, str) else None
    if reader is not None:
        return reader(spec)
    if isinstance(spec, str) and spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        if not name:
            raise DataError(f"{spec!r}: expected hf:ORG/NAME[:CONFIG]")
        return _iter_hub(name, config or None, split)
    if isinstance(spec, str) and is_url(spec):
        return _iter_url(spec, split, limit)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return _iter_dir(path, split, limit)
    if path.is_file():
        return _iter_file(path, limit)
    if isinstance(spec, str) and not _looks_local(spec) and spec.count("/") == 1:
        return _iter_hub(spec, None, split)
    scheme, colon, _ = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if colon and scheme.replace("-", "").isalnum() and len(scheme) > 1:
        known = ", ".join(f"{name}:" for name in (*_BUILT_IN_SCHEMES, *sorted(_SCHEMES)))
        raise DataError(f"{spec}: no such file or directory, and no source scheme {scheme!r} is registered "
                        f"(known: {known})")
    raise DataError(f"{spec}: no such file or directory (use hf:NAME for a hub dataset)")


def _apply_map(data: dict[str, Any], field_map: Mapping[str, str]) -> dict[str, Any]:
    out = dict(data)
    for src in field_map.values():  # drop all renamed sources first so swaps like {a: b, b: a} work
        out.pop(src, None)
    for dst, src in field_map.items():
        if src in data:
            out[dst] = data[src]
    return out


def _check_fields(rec: Record, data: dict[str, Any], fields: Sequence[str], field_map: Mapping[str, str]) -> None:
    for name in fields:
        if data.get(name) is None:
            what = "is null" if name in data else "is missing"
            src = f" (read from source field {field_map[name]!r})" if name in field_map else ""
            raise DataError(
                f"{rec.source}:{rec.line}: required field {name!r}{src} {what}; record has fields {sorted(data)}"
            )


def stream_records(
    spec: str | Path,
    *,
    fields: Sequence[str] = (),
    field_map: Mapping[str, str] | None = None,
    split: str = "train",
    limit: int | None = None,
    allow_empty: bool = False,
) -> Iterator[Record]:
    """Records from a file, shard folder, `save_to_disk` folder or hub dataset, one at a time (a 1M-question records
    folder streams part by part, never held whole).

    ``field_map`` maps output field -> source field; ``fields`` must be present and non-null after
    mapping. Raises DataError naming ``source:line`` and the field on any schema or parse problem, when the
    offending record is reached.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    field_map = dict(field_map or {})
    count = 0
    if limit != 0:
        # closing() releases the open file at once when `limit` stops early.
        with closing(_iter_spec(spec, split, limit)) as it:
            for rec in it:
                data = _apply_map(rec.data, field_map) if field_map else rec.data
                _check_fields(rec, data, fields, field_map)
                yield Record(data, rec.source, rec.line)
                count += 1
                if limit is not None and count >= limit:
                    break
    if not count and not allow_empty:
        raise DataError(f"{spec}: no records found")


def read_records(spec: str | Path, **options: Any) -> list[Record]:
    """Read records from a file, shard folder, `save_to_disk` folder or hub dataset, into a list (small sets; see
    `stream_records` for the options: fields, field_map, split, limit, allow_empty)."""
    return list(stream_records(spec, **options))


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as UTF-8 JSON lines atomically (temp file + os.replace); return the row count."""
    return write_part(path, rows)["rows"]
