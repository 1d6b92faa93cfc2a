"""Seed questions in, and the QPO-data stage: an optimiser LLM rewrites generated questions into preference pairs."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from sq_jax.data.sources import read_records
from sq_jax.eval.extract import extract_answer, gsm8k_gold
from sq_jax.pipeline.chat_backends import LocalBackend, OpenAIBackend
from sq_jax.pipeline.optimise import optimise
from sq_jax.pipeline.stages.base import Kind, StageContext
from sq_jax.prompts.optimiser import check_directions
from sq_jax.sampling.engine_factory import EngineSettings
from sq_jax.train.config import SourceSection


@dataclasses.dataclass(frozen=True)
class SeedConfig:
    sources: list[SourceSection]
    question_field: str = "question"
    answer_field: str | None = "answer"  # None: questions only (no difficulty labels from these)
    # How the gold answer is stored: gsm8k (after ####), boxed (a solution with \boxed{}), plain (the answer),
    # auto (gsm8k when the text has ####, boxed when it has \boxed, else plain: GSM8K and MATH in one stage).
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"


def _gold(value: Any, fmt: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if fmt == "auto":
        fmt = "gsm8k" if "####" in text else "boxed" if "\\boxed" in text else "plain"
    if fmt == "gsm8k":
        return gsm8k_gold(text)
    if fmt == "boxed":
        return extract_answer(text)
    return text.strip()


def seed(ctx: StageContext, cfg: SeedConfig) -> dict[str, Any]:
    """Seed questions with stable ids (the source's own `id`, else file:line) and gold answers where known."""
    rows, seen, stats = [], set(), {"records": 0, "duplicate_ids": 0, "without_answer": 0}
    for source in cfg.sources:
        records = read_records(source.path, fields=(cfg.question_field,), field_map=source.field_map,
                               split=source.split, limit=source.limit)
        for r in records:
            stats["records"] += 1
            rid = str(r.data.get("id", f"{r.source}:{r.line}"))
            if rid in seen:
                raise ctx.error(f"{r.source}:{r.line}: duplicate id {rid!r}; ids must be unique across sources")
            seen.add(rid)
            answer = _gold(r.data.get(cfg.answer_field), cfg.answer_format) if cfg.answer_field else None
            stats["without_answer"] += answer is None
            rows.append({"id": rid, "question": str(r.data[cfg.question_field]).strip(), "answer": answer})
    stats["seeds"] = ctx.write_records(rows)
    return stats


@dataclasses.dataclass(frozen=True)
class OpenAISection:
    model: str = "gpt-4o-mini"
    base_url: str | None = None  # any OpenAI-compatible endpoint (vLLM, ...); None: api.openai.com
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 5
    concurrency: int = 8
    cache_dir: str | None = None  # default: <stage dir>/cache (kept across reruns of the same stage)


@dataclasses.dataclass(frozen=True)
class OptimiseConfig:
    backend: Literal["local", "openai"] = "local"
    model: str | None = None  # local backend: a model path; default the `model` input's export
    openai: OpenAISection = dataclasses.field(default_factory=OpenAISection)
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    # The authors' optimiser (GPT-4o-mini) runs greedy with room for 4096 tokens; a reply cut at the limit is
    # dropped and counted (`dropped_truncated`), never a chosen question.
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 4096
    limit: int | None = None
    # The paper rewrites half the questions for solvability and half for difficulty; one name restricts to it.
    directions: tuple[Literal["solvability", "difficulty"], ...] = ("solvability", "difficulty")

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", check_directions(self.directions))


def optimise_stage(ctx: StageContext, cfg: OptimiseConfig) -> dict[str, Any]:
    """Pairs {id, chosen (rewrite), rejected (original), direction}; no prompt: QPO uses the pre-query template."""
    rows = ctx.records("questions")
    rows = rows[: cfg.limit] if cfg.limit is not None else rows
    if cfg.backend == "openai":
        o = cfg.openai
        # The cache lives outside the stage folder: a changed setting downstream of the replies never pays twice.
        cache = o.cache_dir or str(ctx.output_dir / "_cache" / "optimiser")
        try:
            backend = OpenAIBackend(o.model, base_url=o.base_url, api_key_env=o.api_key_env,
                                    timeout_s=o.timeout_s, max_retries=o.max_retries,
                                    concurrency=o.concurrency, cache_dir=cache,
                                    temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=ctx.seed)
        except ValueError as e:
            raise ctx.error(str(e)) from None
    else:
        backend = LocalBackend(ctx.model("model", cfg.model), engine=cfg.engine,
                               temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                               seed=ctx.seed)
    pairs, stats = optimise(rows, backend, seed=ctx.seed, directions=cfg.directions)
    ctx.write_records(pairs)
    return stats


KINDS = {
    "seed": Kind(SeedConfig, seed),
    "optimise": Kind(OptimiseConfig, optimise_stage, required_inputs=("questions",), optional_inputs=("model",)),
}
