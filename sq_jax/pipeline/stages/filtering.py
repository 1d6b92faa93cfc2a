"""Question filters as stages: language, near-duplicates, benchmark contamination.

Each streams its input part by part and writes the kept questions as its records and the dropped ones, with
their reason, to `dropped/`: no stage holds the rows (2M questions in the paper's run)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sq_jax.pipeline.filters import (
    Decontaminator,
    NearDuplicateFilter,
    decontaminate_stream,
    dedup_stream,
    language_problem,
    normalize,
)
from sq_jax.pipeline.stages.base import Kind, StageContext


def _split(ctx: StageContext, verdicts: Iterable[tuple[Mapping[str, Any], str | None]], field: str,
           reasons: Callable[[str], str]) -> dict[str, Any]:
    """Write each (row, why it is dropped or None) to the records or to `dropped/` (the why in ``field``).

    Stats: dropped_<reason> counts (first-seen order), then input, kept, dropped."""
    stats: dict[str, Any] = {}
    with ctx.record_writer() as kept, ctx.dropped_writer() as dropped:
        for row, why in verdicts:
            if why is None:
                kept.write(row)
            else:
                dropped.write({**row, field: why})
                stats[reasons(why)] = stats.get(reasons(why), 0) + 1
    stats.update(input=kept.rows + dropped.rows, kept=kept.rows, dropped=dropped.rows)
    return stats


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    min_words: int = 3


def language(ctx: StageContext, cfg: LanguageConfig) -> dict[str, Any]:
    verdicts = ((r, language_problem(r["question"], min_words=cfg.min_words)) for r in ctx.iter_records("questions"))
    return _split(ctx, verdicts, "reason", lambda reason: f"dropped_{reason}")


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    numbers_must_match: bool = True


def near_duplicates(ctx: StageContext, cfg: DedupConfig, index: NearDuplicateFilter | None = None) -> dict[str, Any]:
    """``index``: an empty filter with ``cfg``'s settings to use (and read afterwards, e.g. its `nbytes`)."""
    if index is None:
        index = NearDuplicateFilter(cfg.threshold, cfg.num_perm, cfg.shingle, seed=ctx.seed,
                                    numbers_must_match=cfg.numbers_must_match)
    verdicts = dedup_stream(ctx.iter_records("questions"), "question", dedup_filter=index)
    return {"dropped_near_duplicate": 0} | _split(ctx, verdicts, "duplicate_of", lambda _: "dropped_near_duplicate")


@dataclasses.dataclass(frozen=True)
class DecontaminationConfig:
    benchmarks: list[str] = dataclasses.field(
        default_factory=lambda: ["gsm8k", "math500", "college_math", "olympiadbench"])
    data_dir: str | None = None  # local copies at <data_dir>/<name>/test.jsonl; None: the hub
    # benchmark -> its local test file, over data_dir; college_math has no hub copy and needs one of the two
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    n: int = 13


def matched_words(index: Decontaminator, question: str) -> str:
    """The words of `question` (normalised) that overlap a test question: its first n-gram found in one, else its
    longest shorter run that is (a short test question inside it), else the whole question (contained in a test
    question). Only for questions `index.match` flagged, so the extra lookups cost nothing at scale.

    `match` of an n-word window also flags a window that merely holds a short test question; a window that is
    itself inside a test question has both its (n-1)-word ends inside one too, which `match` checks by containment."""
    words = normalize(question).split()
    n, shortest = index.n, index.min_words

    def hit(i: int, length: int) -> bool:
        return index.match(" ".join(words[i : i + length])) is not None

    if len(words) >= n:
        for i in range(len(words) - n + 1):
            if hit(i, n) and (n - 1 < shortest or (hit(i, n - 1) and hit(i + 1, n - 1))):
                return " ".join(words[i : i + n])
        for length in range(n - 1, shortest - 1, -1):
            for i in range(len(words) - length + 1):
                if hit(i, length):
                    return " ".join(words[i : i + length])
    return " ".join(words)


def contamination(ctx: StageContext, cfg: DecontaminationConfig) -> dict[str, Any]:
    index = Decontaminator.from_benchmarks(cfg.benchmarks, data_dir=cfg.data_dir, n=cfg.n, paths=cfg.paths,
                                           prefix=f"stages.{ctx.name}.config.")
    verdicts = ((row if name is None else {**row, "contaminated_ngram": matched_words(index, row["question"])}, name)
                for row, name in decontaminate_stream(ctx.iter_records("questions"), "question", index))
    stats = _split(ctx, verdicts, "contaminated_with", lambda name: f"dropped_{name}")
    per = {k: stats.pop(k) for k in list(stats) if k not in ("input", "kept", "dropped")}
    return {"dropped_contaminated": stats["dropped"], **per, **stats}


KINDS = {
    "filter_language": Kind(LanguageConfig, language, required_inputs=("questions",)),
    "dedup": Kind(DedupConfig, near_duplicates, required_inputs=("questions",)),
    "decontaminate": Kind(DecontaminationConfig, contamination, required_inputs=("questions",)),
}
