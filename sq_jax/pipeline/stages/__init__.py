"""Stage kinds: what each pipeline stage does, its typed config and the inputs it takes. No scheduling here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sq_jax.data.sources import read_records, write_jsonl

RECORDS = "records.jsonl"


class StageError(ValueError):
    """A stage cannot go on; the message starts with the stage's name."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r}: {message}")
        self.stage = stage


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

    def error(self, message: str) -> StageError:
        return StageError(self.name, message)

    def records(self, role: str) -> list[dict[str, Any]]:
        path = self.inputs[role] / RECORDS
        if not path.is_file():
            raise self.error(f"input {role!r} ({self.inputs[role].name}) has no {RECORDS}: it is not a records stage")
        return [r.data for r in read_records(path, allow_empty=True)]

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

    def write_records(self, rows: Iterable[dict[str, Any]]) -> int:
        if not self.writer:  # the same rows as process 0's, which writes them
            return sum(1 for _ in rows)
        return write_jsonl(self.dir / RECORDS, rows)

    def write_dropped(self, rows: Iterable[dict[str, Any]]) -> int:
        """`dropped.jsonl`: what a filter set apart, each row with its reason (process 0 writes it)."""
        if not self.writer:
            return sum(1 for _ in rows)
        return write_jsonl(self.dir / "dropped.jsonl", rows)

    def count_records(self) -> int:
        path = self.dir / RECORDS
        if not path.is_file():
            return 0
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())


@dataclasses.dataclass(frozen=True)
class Kind:
    config: type
    run: Callable[[StageContext, Any], dict[str, Any]]
    required_inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    produces: str = "records"  # records | model | report
    collective: bool = False  # runs in every process of a multi-host job (see StageContext)
    any_inputs: bool = False  # inputs under any role names (at least one), e.g. the sets a mix combines
    check_inputs: Callable[[Any, dict[str, str]], None] | None = None  # (typed config, inputs): ValueError if wrong


# Imported last: the stage modules use the classes above.
from sq_jax.pipeline.stages import filtering, generation, mixing, output, questions, training  # noqa: E402

KINDS: dict[str, Kind] = {}
for _module in (questions, generation, filtering, mixing, training, output):
    KINDS.update(_module.KINDS)
