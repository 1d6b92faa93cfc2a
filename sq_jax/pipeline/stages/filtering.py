"""Question filters as stages: language, difficulty (a trained scorer), near-duplicates, benchmark contamination.
Each writes the kept questions as its records and the dropped ones, with their reason, to `dropped.jsonl`."""

from __future__ import annotations

import dataclasses
from typing import Any

from sq_jax.pipeline.filters import Decontaminator, NearDuplicateFilter, decontaminate, dedup, language_problem
from sq_jax.pipeline.stages import Kind, StageContext


def _finish(ctx: StageContext, kept: list[dict], dropped: list[dict], stats: dict[str, Any]) -> dict[str, Any]:
    ctx.write_dropped(dropped)
    stats.update(input=len(kept) + len(dropped), kept=ctx.write_records(kept), dropped=len(dropped))
    return stats


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    min_words: int = 3


def language(ctx: StageContext, cfg: LanguageConfig) -> dict[str, Any]:
    kept, dropped, reasons = [], [], {}
    for r in ctx.records("questions"):
        reason = language_problem(r["question"], min_words=cfg.min_words)
        if reason is None:
            kept.append(r)
        else:
            reasons[f"dropped_{reason}"] = reasons.get(f"dropped_{reason}", 0) + 1
            dropped.append({**r, "reason": reason})
    return _finish(ctx, kept, dropped, reasons)


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    numbers_must_match: bool = True


def near_duplicates(ctx: StageContext, cfg: DedupConfig) -> dict[str, Any]:
    index = NearDuplicateFilter(cfg.threshold, cfg.num_perm, cfg.shingle, seed=ctx.seed,
                                numbers_must_match=cfg.numbers_must_match)
    kept, dropped = dedup(ctx.records("questions"), "question", dedup_filter=index)
    return _finish(ctx, kept, dropped, {"dropped_near_duplicate": len(dropped)})


@dataclasses.dataclass(frozen=True)
class DecontaminationConfig:
    benchmarks: list[str] = dataclasses.field(
        default_factory=lambda: ["gsm8k", "math500", "college_math", "olympiadbench"])
    data_dir: str | None = None  # local copies at <data_dir>/<name>/test.jsonl; None: the hub
    # benchmark -> its local test file, over data_dir; college_math has no hub copy and needs one of the two
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    n: int = 13


def contamination(ctx: StageContext, cfg: DecontaminationConfig) -> dict[str, Any]:
    index = Decontaminator.from_benchmarks(cfg.benchmarks, data_dir=cfg.data_dir, n=cfg.n, paths=cfg.paths,
                                           prefix=f"stages.{ctx.name}.config.")
    kept, dropped = decontaminate(ctx.records("questions"), "question", index)
    per = {}
    for d in dropped:
        per[f"dropped_{d['contaminated_with']}"] = per.get(f"dropped_{d['contaminated_with']}", 0) + 1
    return _finish(ctx, kept, dropped, {"dropped_contaminated": len(dropped), **per})


KINDS = {
    "filter_language": Kind(LanguageConfig, language, required_inputs=("questions",)),
    "dedup": Kind(DedupConfig, near_duplicates, required_inputs=("questions",)),
    "decontaminate": Kind(DecontaminationConfig, contamination, required_inputs=("questions",)),
}
