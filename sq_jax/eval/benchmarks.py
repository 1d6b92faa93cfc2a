"""Load the paper's evaluation benchmarks as `BenchmarkItem`s with a uniform gold-answer shape.

Sources (hub ids are used when no local ``path`` is given; all reading goes through
`sq_jax.data.sources.read_records`, so every schema error names ``file:line`` and the field):

- ``gsm8k``: ``openai/gsm8k`` config ``main`` split ``test`` (1,319); ``question``, ``answer`` (ends ``#### N``).
- ``math``: ``EleutherAI/hendrycks_math``, its 7 subject configs, split ``test`` (5,000); ``problem``, ``solution``.
- ``math500``: ``HuggingFaceH4/MATH-500`` split ``test`` (500); ``problem``, ``answer``, ``solution``.
- ``college_math``: no built-in hub id, pass ``path`` (the Qwen2.5-Math evaluation suite's ``test.jsonl``,
  2,818); ``question``, ``answer``.
- ``olympiadbench``: ``Hothan/OlympiadBench`` config ``OE_TO_maths_en_COMP`` split ``train`` (675); ``question``,
  ``final_answer`` (a list), ``solution``, ``is_multiple_answer``, ``unit``.

``math`` uses EleutherAI's copy because the original ``hendrycks/competition_math`` was taken off the hub;
it has no answer column, so the gold is the last ``\\boxed{}`` of the solution (as in the original
MATH evaluation). ``jsonl:PATH`` loads any JSONL with a ``question_field`` / ``answer_field`` mapping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sq_jax.data.sources import DataError, Record, read_records
from sq_jax.eval.extract import extract_answer, gsm8k_gold
from sq_jax.eval.grading import GradeRequest

__all__ = ["BENCHMARKS", "BenchmarkItem", "MATH_SUBJECTS", "benchmark_path", "load_benchmark"]

BENCHMARKS = ("gsm8k", "math", "math500", "college_math", "olympiadbench")
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@dataclass(frozen=True)
class BenchmarkItem:
    """One evaluation problem. ``gold`` is a list only for answers given as several parts."""

    id: str
    question: str
    gold: str | list[str]
    multiple: bool = False  # gold items together form an order-free answer set
    unit: str | None = None  # stripped from both sides when grading (OlympiadBench)
    gold_solution: str | None = None
    benchmark: str = ""

    def grade_request(self, prediction: str, *, extracted: bool = False) -> GradeRequest:
        """The `GradeRequest` grading ``prediction`` (a whole solution unless ``extracted``) against this item."""
        return GradeRequest(prediction, self.gold, self.multiple, self.unit, extracted)


def _text(rec: Record, field: str) -> str:
    value = rec.data[field]
    if not isinstance(value, str):
        raise DataError(f"{rec.where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _optional_text(rec: Record, field: str) -> str | None:
    value = rec.data.get(field)
    return value if isinstance(value, str) and value.strip() else None


def _gsm8k(rec: Record, index: int) -> BenchmarkItem:
    answer = _text(rec, "answer")
    try:
        gold = gsm8k_gold(answer)
    except ValueError:
        raise DataError(f"{rec.where}: field 'answer' has no '#### <final answer>' marker") from None
    return BenchmarkItem(f"gsm8k-{index}", _text(rec, "question"), gold, gold_solution=answer, benchmark="gsm8k")


def _boxed_gold(rec: Record, name: str, index: int) -> BenchmarkItem:
    solution = _optional_text(rec, "solution")
    gold = _optional_text(rec, "answer")
    if gold is None:
        gold = extract_answer(solution) if solution and "\\boxed" in solution else None
        if gold is None:
            raise DataError(f"{rec.where}: no field 'answer' and no \\boxed{{}} answer in field 'solution'")
    item_id = rec.data.get("unique_id") or rec.data.get("id")
    return BenchmarkItem(
        str(item_id) if item_id is not None else f"{name}-{index}",
        _text(rec, "problem"),
        gold.strip(),
        gold_solution=solution,
        benchmark=name,
    )


def _college_math(rec: Record, index: int) -> BenchmarkItem:
    return BenchmarkItem(
        f"college_math-{index}", _text(rec, "question"), _text(rec, "answer"), benchmark="college_math"
    )


def _olympiadbench(rec: Record, index: int) -> BenchmarkItem:
    final = rec.data["final_answer"]
    if isinstance(final, str):
        final = [final]
    if not isinstance(final, list) or not final or not all(isinstance(a, str) for a in final):
        raise DataError(f"{rec.where}: field 'final_answer' must be a non-empty list of strings, got {final!r}")
    solutions = rec.data.get("solution")
    solution = solutions[0] if isinstance(solutions, list) and solutions else solutions
    question = _text(rec, "question")
    context = _optional_text(rec, "context")
    unit = _optional_text(rec, "unit")
    item_id = rec.data.get("id")
    return BenchmarkItem(
        f"olympiadbench-{item_id if item_id is not None else index}",
        f"{context}\n\n{question}" if context else question,
        list(final),
        multiple=bool(rec.data.get("is_multiple_answer")),
        unit=unit,
        gold_solution=solution if isinstance(solution, str) else None,
        benchmark="olympiadbench",
    )


def _generic(name: str, id_field: str | None) -> Callable[[Record, int], BenchmarkItem]:
    def convert(rec: Record, index: int) -> BenchmarkItem:
        answer = rec.data["answer"]
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise DataError(f"{rec.where}: answer field must be a string or a number, got {type(answer).__name__}")
        if id_field is not None and rec.data.get(id_field) is None:
            raise DataError(f"{rec.where}: id field {id_field!r} is missing")
        item_id = str(rec.data[id_field]) if id_field else f"{name}-{index}"
        solution = _optional_text(rec, "solution")
        return BenchmarkItem(item_id, _text(rec, "question"), str(answer), gold_solution=solution, benchmark=name)

    return convert


def _read(
    sources: Sequence[str],
    fields: Sequence[str],
    split: str,
    limit: int | None,
    field_map: dict[str, str] | None = None,
) -> list[Record]:
    records: list[Record] = []
    for spec in sources:
        left = None if limit is None else limit - len(records)
        if left == 0:
            break
        records += read_records(spec, fields=fields, field_map=field_map, split=split, limit=left)
    return records


# Benchmarks the hub has no copy of: they are read from a local file or not at all.
LOCAL_ONLY = ("college_math",)


def benchmark_path(name: str, *, data_dir: str | None = None, paths: dict[str, str] | None = None,
                   prefix: str = "") -> str | None:
    """The local test file of benchmark `name`: `paths[name]`, else `<data_dir>/<name>/test.jsonl`, else None (the
    hub). A local-only benchmark with neither, or a named file that is missing, is an error naming the config key
    (`prefix` + `paths.<name>` or `data_dir`)."""
    if name.startswith("jsonl:"):
        return None
    if paths and name in paths:
        path, key = os.path.expanduser(paths[name]), f"{prefix}paths.{name}"
    elif data_dir:
        path, key = os.path.join(os.path.expanduser(data_dir), name, "test.jsonl"), f"{prefix}data_dir"
    elif name in LOCAL_ONLY:
        raise FileNotFoundError(f"{name} has no hub copy: set {prefix}paths.{name} to its local test.jsonl (the "
                                "Qwen2.5-Math evaluation suite's evaluation/data/college_math/test.jsonl)")
    else:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: the test file of {name}, {path}, does not exist")
    return path


def load_benchmark(
    name: str,
    *,
    path: str | None = None,
    limit: int | None = None,
    split: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
) -> list[BenchmarkItem]:
    """Load benchmark ``name`` (see `BENCHMARKS`, or ``jsonl:PATH``) from the hub, or from ``path``.

    ``limit`` keeps the first items; ``split`` overrides the hub split. For ``jsonl:PATH``,
    ``question_field`` / ``answer_field`` name the source columns and ``id_field`` an optional id column.
    Raises `DataError` naming file, line and field for malformed or incomplete rows.
    """
    convert: Callable[[Record, int], BenchmarkItem]
    field_map: dict[str, str] | None = None
    if name.startswith("jsonl:"):
        sources, default_split = [name[len("jsonl:") :]], "train"
        fields: Sequence[str] = ("question", "answer")
        field_map = {"question": question_field, "answer": answer_field}
        if path:
            raise ValueError("give the file either as jsonl:PATH or as path=, not both")
        convert = _generic("jsonl", id_field)
    elif name == "gsm8k":
        sources, default_split, fields = [path or "hf:openai/gsm8k:main"], "test", ("question", "answer")
        convert = _gsm8k
    elif name in ("math", "math500"):
        if path:
            sources = [path]
        elif name == "math500":
            sources = ["hf:HuggingFaceH4/MATH-500"]
        else:
            sources = [f"hf:EleutherAI/hendrycks_math:{s}" for s in MATH_SUBJECTS]
        default_split = "test"
        fields = ("problem", "answer") if name == "math500" else ("problem", "solution")

        def convert(rec: Record, index: int, _name: str = name) -> BenchmarkItem:
            return _boxed_gold(rec, _name, index)

    elif name == "college_math":
        if not path:
            raise ValueError(
                "college_math has no built-in hub source; pass path= to its test.jsonl "
                "(shipped with the Qwen2.5-Math evaluation suite)"
            )
        sources, default_split, fields, convert = [path], "test", ("question", "answer"), _college_math
    elif name == "olympiadbench":
        sources = [path or "hf:Hothan/OlympiadBench:OE_TO_maths_en_COMP"]
        default_split, fields, convert = "train", ("question", "final_answer"), _olympiadbench
    else:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)} or jsonl:PATH")
    records = _read(sources, fields, split or default_split, limit, field_map)
    return [convert(rec, i) for i, rec in enumerate(records)]

