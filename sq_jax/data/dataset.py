"""The dataset layer every stage writes and reads: a folder of completed parts, one atomic writer, one manifest.

A stage's records are `<stage>/records/part-00000.jsonl, part-00001.jsonl, ...`: each part is written under a
hidden temporary name and renamed when complete, so a reader (or a rerun after a kill) sees only whole parts, and
its row count and SHA-256 go into the stage's manifest (`_stage.json`, written by `write_json_atomic`). Readers
stream part by part, a line at a time: no stage holds a whole set in Python objects.

JSONL rather than Parquet for records: the stages stream text rows of varying fields (a judge's reply, a
response), and a JSONL part is appended row by row in constant memory, where a Parquet writer buffers a row
group; the export stage writes Parquet for users.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

PART_PATTERN = "part-*.jsonl"


def part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file that appears at `path` only once the block finishes without error (temp name + fsync + rename in
    the same folder); on error the temp file is removed and `path` keeps its previous content."""
    path = Path(os.path.expanduser(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 so umask applies as usual
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def dump_row(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(row), ensure_ascii=False) + "\n").encode("utf-8")


def write_part(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One part, atomically: {name, rows, bytes, sha256}."""
    digest, count, size = hashlib.sha256(), 0, 0
    with atomic_open(path, "wb") as f:
        for row in rows:
            line = dump_row(row)
            f.write(line)
            digest.update(line)
            count += 1
            size += len(line)
    return {"name": Path(path).name, "rows": count, "bytes": size, "sha256": digest.hexdigest()}


class PartWriter:
    """Rows streamed into `folder/part-NNNNN.jsonl`, a new part every `part_rows` rows, each part atomic.

    `write` buffers at most one part's lines (bytes, not dicts). `parts` lists what was written, for the
    manifest. A writer that is not the writing process (`enabled=False`) counts rows and writes nothing."""

    def __init__(self, folder: str | Path, part_rows: int = 100_000, *, start: int = 0, enabled: bool = True):
        if part_rows < 1:
            raise ValueError(f"part_rows must be >= 1, got {part_rows}")
        self.folder, self.part_rows, self.enabled = Path(folder), part_rows, enabled
        self.next_index = start
        self.parts: list[dict[str, Any]] = []
        self.rows = 0
        self._buffer: list[bytes] = []

    def write(self, row: Mapping[str, Any]) -> None:
        self.rows += 1
        if not self.enabled:
            return
        self._buffer.append(dump_row(row))
        if len(self._buffer) >= self.part_rows:
            self.flush()

    def write_all(self, rows: Iterable[Mapping[str, Any]]) -> int:
        for row in rows:
            self.write(row)
        return self.rows

    def flush(self) -> None:
        """Close the current part now (a part boundary, e.g. one part per input part); no-op when empty."""
        if not self._buffer:
            return
        path = self.folder / part_name(self.next_index)
        digest = hashlib.sha256()
        with atomic_open(path, "wb") as f:
            for line in self._buffer:
                f.write(line)
                digest.update(line)
        self.parts.append({"name": path.name, "rows": len(self._buffer),
                           "bytes": sum(map(len, self._buffer)), "sha256": digest.hexdigest()})
        self.next_index += 1
        self._buffer = []

    def close(self) -> list[dict[str, Any]]:
        self.flush()
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)  # an empty set is an empty folder, not a missing one
        return self.parts

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def list_parts(folder: str | Path) -> list[Path]:
    """Completed parts in order (temporary files are hidden names, never listed)."""
    return sorted(Path(folder).glob(PART_PATTERN))


def iter_part(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of one part, one line at a time; a bad line names the file and line."""
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def iter_rows(folder: str | Path) -> Iterator[dict[str, Any]]:
    for path in list_parts(folder):
        yield from iter_part(path)


def count_rows(folder: str | Path) -> int:
    total = 0
    for path in list_parts(folder):
        with path.open("rb") as f:
            total += sum(1 for line in f if line.strip())
    return total


def parts_digest(parts: Iterable[Mapping[str, Any]]) -> str:
    """One hash of a set's content, from its parts' hashes (a downstream fingerprint of this set)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part['name']}:{part['sha256']}\n".encode())
    return digest.hexdigest()
