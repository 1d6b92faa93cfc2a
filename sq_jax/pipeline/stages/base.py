"""What every stage shares: the context it runs in (its inputs, its records), its kind and its error."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sq_jax.data.dataset import PartWriter, count_rows, iter_part, list_parts, read_json

RECORDS = "records"  # the folder of parts (sq_jax.data.dataset)
DROPPED = "dropped"
STAGE_MANIFEST = "_stage.json"  # one per stage folder, written by the runner
# Rows a part holds: parts are what collective stages share out (a part per process at a time), so a set of 1M
# questions must come in many more parts than a slice has hosts; generation stages write one per shard instead.
PART_ROWS = 10_000


class StageError(ValueError):
    """A stage cannot go on; the message starts with the stage's name."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r}: {message}")
        self.stage = stage


def refuse_output_dir(output_dir: str, stage: str) -> None:
    """A stage config embedding a job's config leaves `output_dir` to the runner: the stage writes to its own
    folder, so a value there would be silently ignored."""
    if output_dir:
        raise ValueError(f"output_dir={output_dir!r}: {stage} writes to its own stage folder; remove the key")


@dataclasses.dataclass
class StageContext:
    name: str
    dir: Path
    inputs: dict[str, Path]  # role -> upstream stage folder
    seed: int
    output_dir: Path
    # Multi-host: a collective stage runs in every process (training; generation, each host its share); the others
    # run in process 0 while the rest wait. Only process 0 writes records, manifests and reports.
    collective: bool = False
    writer: bool = True
    records_writer: PartWriter | None = None
    adopted_parts: list[dict[str, Any]] | None = None  # parts written shard by shard by the generation job

    def adopt_parts(self, parts: list[dict[str, Any]]) -> None:
        """This stage's records are `parts` ({name, rows, bytes, sha256}), already in records/ (written by the
        processes that generated them), instead of a `record_writer`'s."""
        if self.records_writer is not None:
            raise self.error("a stage writes its records once")
        self.adopted_parts = list(parts)

    def error(self, message: str) -> StageError:
        return StageError(self.name, message)

    def input_parts(self, role: str) -> list[Path]:
        """The completed parts of an upstream stage's records, in order."""
        folder = self.inputs[role] / RECORDS
        if not folder.is_dir():
            raise self.error(f"input {role!r} ({self.inputs[role].name}) has no {RECORDS}/ folder: it is not a "
                             "records stage")
        return list_parts(folder)

    def iter_records(self, role: str) -> Iterator[dict[str, Any]]:
        """An upstream stage's records, streamed part by part; process 0 shows a bar with rows/s and the ETA."""
        parts = self.input_parts(role)
        rows = (row for path in parts for row in iter_part(path))
        if not self.writer:
            yield from rows
            return
        listed = read_json(self.inputs[role] / STAGE_MANIFEST).get("parts", [])
        total = sum(p["rows"] for p in listed) if len(listed) == len(parts) else None
        yield from tqdm(rows, total=total, desc=f"{self.name} <- {role}", unit="row", mininterval=2.0)

    def records(self, role: str) -> list[dict[str, Any]]:
        """All of an upstream stage's records in a list: only for the small sets (seeds, QPO pairs)."""
        return list(self.iter_records(role))

    def model(self, role: str, explicit: str | None = None) -> str:
        """A model path: the stage config's own, else the `hf/` export of the upstream training stage."""
        if explicit:
            return explicit
        if role not in self.inputs:
            raise self.error(f"needs a model: set config.model or an input {role!r} from a training stage")
        path = self.inputs[role] / "hf"
        if not (path / "config.json").is_file():
            raise self.error(f"input {role!r} ({self.inputs[role].name}) has no exported model at {path}")
        return str(path)

    def record_writer(self, part_rows: int = PART_ROWS) -> PartWriter:
        """This stage's records, streamed into parts (process 0 writes; the others only count)."""
        if self.records_writer is not None or self.adopted_parts is not None:
            raise self.error("a stage writes its records once")
        self.records_writer = PartWriter(self.dir / RECORDS, part_rows, enabled=self.writer)
        return self.records_writer

    def dropped_writer(self, part_rows: int = PART_ROWS) -> PartWriter:
        """`dropped/`: what a filter set apart, each row with its reason."""
        return PartWriter(self.dir / DROPPED, part_rows, enabled=self.writer)

    def write_records(self, rows: Iterable[dict[str, Any]]) -> int:
        with self.record_writer() as writer:
            return writer.write_all(rows)

    def write_dropped(self, rows: Iterable[dict[str, Any]]) -> int:
        with self.dropped_writer() as writer:
            return writer.write_all(rows)

    def count_records(self) -> int:
        if self.records_writer is not None:
            return self.records_writer.rows
        if self.adopted_parts is not None:
            return sum(p["rows"] for p in self.adopted_parts)
        return count_rows(self.dir / RECORDS)

    def record_parts(self) -> list[dict[str, Any]]:
        """{name, rows, bytes, sha256} of each part this stage wrote (its manifest lists them)."""
        if self.adopted_parts is not None:
            return list(self.adopted_parts)
        return list(self.records_writer.parts) if self.records_writer is not None else []


@dataclasses.dataclass(frozen=True)
class Kind:
    config: type
    run: Callable[[StageContext, Any], dict[str, Any]]
    required_inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    produces: str = "records"  # records | model | report
    collective: bool = False  # runs in every process of a multi-host job (see StageContext)
    # records/ and dropped/ are the stage's resumable work (parts written as generation shards finish): a rerun
    # of an unchanged stage keeps them; other stages rewrite theirs from their work (scores/) on every run.
    parts_are_work: bool = False
    any_inputs: bool = False  # inputs under any role names (at least one), e.g. the sets a mix combines
    check_inputs: Callable[[Any, dict[str, str]], None] | None = None  # (typed config, inputs): ValueError if wrong
