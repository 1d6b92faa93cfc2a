"""Stages that run the sampling engine: question synthesis, the solvability judge, solver answers for difficulty
labels, and n responses per question. All go through the resumable offline job (`sq-jax generate`), so a killed
stage resumes at the last finished shard, and each request's seed comes from the pipeline seed and its id."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from sq_jax.data.sources import read_records, write_jsonl
from sq_jax.eval.extract import extract_all_boxed, extract_answer
from sq_jax.models.tokenizer import parse_judge_verdict
from sq_jax.pipeline.stages import Kind, StageContext
from sq_jax.parallel.distributed import sync
from sq_jax.sampling.generate_job import GenerateConfig, PromptSection, SamplingSection, run_generate
from sq_jax.sampling.server import EngineSettings


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    model: str | None = None  # default: the `model` input's exported checkpoint
    samples: int = 1
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    backend: Literal["jetstream", "raw"] = "jetstream"
    shard_size: int = 1000
    window: int | None = None
    limit: int | None = None  # first N input records (smoke runs)


@dataclasses.dataclass(frozen=True)
class SynthesisConfig(GenerationConfig):
    count: int = 1000  # questions to synthesise from the pre-query template
    # A question cut at max_tokens is dropped (counted); keeping it is for tests of the machinery only.
    keep_truncated: bool = False


def generate(ctx: StageContext, cfg: GenerationConfig, mode: str, rows: list[dict] | None = None,
             count: int = 0, judge_prompt: str = "sq-jax") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Outputs of the offline job in request order, and its throughput stats."""
    prompts = PromptSection(mode=mode, count=count)
    if rows is not None:
        path = ctx.dir / "prompts.jsonl"
        if ctx.writer:
            write_jsonl(path, ({"id": r["id"], "question": r["question"]} for r in rows))
        if ctx.collective:
            sync(f"prompts:{path}")
        prompts = PromptSection(mode=mode, path=str(path), field="question", id_field="id", judge_prompt=judge_prompt)
    sampling = dataclasses.replace(cfg.sampling, seed=cfg.sampling.seed + ctx.seed)
    job = GenerateConfig(model=ctx.model("model", cfg.model), output_dir=str(ctx.dir / "generate"), prompts=prompts,
                         samples_per_prompt=cfg.samples, sampling=sampling, engine=cfg.engine, backend=cfg.backend,
                         shard_size=cfg.shard_size, window=cfg.window)
    manifest = run_generate(job, collective=ctx.collective)
    outputs: list[dict[str, Any]] = []
    for k in range(manifest["num_shards"]):
        outputs += [r.data for r in read_records(Path(job.output_dir) / f"shard-{k:05d}.jsonl")]
    last = manifest["stats"].get("last_run", {})
    seconds = max(float(last.get("seconds", 0.0)), 1e-9)
    stats = {"requests": manifest["num_requests"], "finish": {k: manifest["stats"].get(k, 0)
                                                              for k in ("stop", "length", "cache", "error")},
             "last_run_requests_per_s": last.get("requests", 0) / seconds,
             "last_run_tokens_per_s": last.get("output_tokens", 0) / seconds}
    return outputs, stats


def _inputs(ctx: StageContext, cfg: GenerationConfig, role: str = "questions") -> list[dict[str, Any]]:
    rows = ctx.records(role)
    return rows[: cfg.limit] if cfg.limit is not None else rows


def finished_questions(outputs: list[dict[str, Any]], stage: str, keep_truncated: bool = False,
                       ) -> tuple[list[dict], list[dict], int]:
    """(questions, questions cut at max_tokens, errors) from synthesis outputs, ids `<stage>-<prompt id>`.

    A question that stopped on `max_tokens` never ended (it has no end-of-question token): it is set apart, before
    any filter or the judge spends time on it."""
    rows, truncated, errors = [], [], 0
    for o in outputs:
        if o["finish_reason"] == "error":
            errors += 1
            continue
        row = {"id": f"{stage}-{o['prompt_id']}", "question": o["output"].strip(), "finish": o["finish_reason"]}
        (truncated if o["finish_reason"] == "length" and not keep_truncated else rows).append(row)
    return rows, truncated, errors


def synthesize(ctx: StageContext, cfg: SynthesisConfig) -> dict[str, Any]:
    """Questions from nothing: the pre-query template, prefilled once and sampled `count` times. Questions cut at
    `max_tokens` are dropped, counted (`dropped_length`) and kept in `dropped.jsonl` for inspection."""
    outputs, stats = generate(ctx, cfg, "pre_query", count=cfg.count)
    rows, truncated, stats["errors"] = finished_questions(outputs, ctx.name, keep_truncated=cfg.keep_truncated)
    stats["dropped_length"] = len(truncated)
    ctx.write_dropped({**r, "reason": "length"} for r in truncated)
    stats["questions"] = ctx.write_records(rows)
    return stats


@dataclasses.dataclass(frozen=True)
class JudgeConfig(GenerationConfig):
    # A reply without a verdict is dropped; `keep` exists for judges too small to follow the format (the tiny
    # default), so the stage still runs end to end. Either way it is counted.
    on_no_verdict: Literal["drop", "keep"] = "drop"
    # "sq-jax": a checklist ending in a `Final verdict: Yes|No` line; "paper": the authors' instruction, which asks
    # only to "conclude with either 'Yes' or 'No'" (read from the reply's last line).
    prompt: Literal["sq-jax", "paper"] = "sq-jax"


def tally_verdicts(rows: list[dict[str, Any]], outputs: dict[str, dict[str, Any]], on_no_verdict: str = "drop",
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(kept, dropped with reasons, counts) from the judge's output per question id.

    A reply cut at `max_tokens` (finish `length`) counts only an explicit `verdict:` it already wrote: its last
    line is mid-reasoning. Counts: verdict_yes / verdict_no / no_verdict (every reply is one), truncated, and
    dropped_unsolvable / dropped_no_verdict; `on_no_verdict: keep` keeps replies without a verdict.
    """
    counts = {"input": len(rows), "kept": 0, "verdict_yes": 0, "verdict_no": 0, "no_verdict": 0, "truncated": 0,
              "dropped_unsolvable": 0, "dropped_no_verdict": 0}
    kept, dropped = [], []
    for r in rows:
        output = outputs[r["id"]]
        truncated = output["finish_reason"] == "length"
        counts["truncated"] += truncated
        verdict = parse_judge_verdict(output["output"], fallback=not truncated)
        counts["verdict_yes" if verdict else "verdict_no" if verdict is False else "no_verdict"] += 1
        if verdict is None and on_no_verdict == "keep":
            verdict = True
        if verdict is True:
            kept.append(r)
            continue
        reason = "unsolvable" if verdict is False else "no_verdict"
        counts[f"dropped_{reason}"] += 1
        dropped.append({**r, "reason": reason, "judge_finish": output["finish_reason"],
                        "judge_reply_end": output["output"][-400:]})
    counts["kept"] = len(kept)
    return kept, dropped, counts


def judge(ctx: StageContext, cfg: JudgeConfig) -> dict[str, Any]:
    """Solvability filter: the judge reasons, then gives its verdict (`parse_judge_verdict`, `tally_verdicts`).
    Dropped questions go to `dropped.jsonl` with the reason and the reply's end."""
    rows = _inputs(ctx, cfg)
    outputs, stats = generate(ctx, cfg, "judge", rows, judge_prompt=cfg.prompt)
    kept, dropped, counts = tally_verdicts(rows, {o["prompt_id"]: o for o in outputs}, cfg.on_no_verdict)
    ctx.write_records(kept)
    ctx.write_dropped(dropped)
    return {**stats, **counts}


@dataclasses.dataclass(frozen=True)
class ResponseConfig(GenerationConfig):
    # Drop responses without a final-answer marker (\boxed{}, "the answer is", "final answer is"), as the paper.
    require_answer: bool = True


def has_final_answer(text: str) -> bool:
    lowered = text.lower()
    return bool(extract_all_boxed(text)) or "he answer is" in lowered or "final answer is" in lowered


def respond(ctx: StageContext, cfg: ResponseConfig) -> dict[str, Any]:
    """n solutions per question with the solver prompt; each keeps its extracted final answer."""
    rows = _inputs(ctx, cfg)
    outputs, stats = generate(ctx, cfg, "solver", rows)
    kept, dropped = [], {"dropped_no_answer": 0, "dropped_error": 0}
    for o in outputs:
        if o["finish_reason"] == "error":
            dropped["dropped_error"] += 1
            continue
        if cfg.require_answer and not has_final_answer(o["output"]):
            dropped["dropped_no_answer"] += 1
            continue
        kept.append({"id": o["id"], "question_id": o["prompt_id"], "query": o["question"],
                     "response": o["output"].strip(), "answer": extract_answer(o["output"]),
                     "finish": o["finish_reason"]})
    stats.update(dropped, responses=ctx.write_records(kept))
    return stats


@dataclasses.dataclass(frozen=True)
class LabelConfig(GenerationConfig):
    samples: int = 4  # solver attempts per seed question: the fail rate's resolution
    grade_timeout_s: float = 5.0


def difficulty_labels(ctx: StageContext, cfg: LabelConfig) -> dict[str, Any]:
    """Fail-rate labels: k solver attempts per seed question with a known answer, graded by the eval grader."""
    from sq_jax.eval.grading import GradeRequest, grade_many

    rows = [r for r in _inputs(ctx, cfg, "seeds") if r.get("answer") not in (None, "")]
    if not rows:
        raise ctx.error("no seed question has an `answer`; difficulty labels need gold answers")
    outputs, stats = generate(ctx, cfg, "solver", rows)
    gold = {r["id"]: str(r["answer"]) for r in rows}
    results = grade_many([GradeRequest(o["output"], gold[o["prompt_id"]]) for o in outputs],
                         timeout_s=cfg.grade_timeout_s)
    right: dict[str, int] = {r["id"]: 0 for r in rows}
    for o, res in zip(outputs, results):
        right[o["prompt_id"]] += bool(res.correct)
    labelled = [{"id": r["id"], "question": r["question"], "score": 1.0 - right[r["id"]] / cfg.samples,
                 "correct": right[r["id"]], "attempts": cfg.samples} for r in rows]
    stats["mean_fail_rate"] = sum(x["score"] for x in labelled) / len(labelled)
    stats["extracted_answers"] = sum(extract_answer(o["output"]) is not None for o in outputs)
    stats["labelled"] = ctx.write_records(labelled)
    return stats


KINDS = {
    "synthesize": Kind(SynthesisConfig, synthesize, optional_inputs=("model",), collective=True),
    "judge": Kind(JudgeConfig, judge, required_inputs=("questions",), optional_inputs=("model",), collective=True),
    "respond": Kind(ResponseConfig, respond, required_inputs=("questions",), optional_inputs=("model",), collective=True),
    "difficulty_labels": Kind(LabelConfig, difficulty_labels, required_inputs=("seeds",), optional_inputs=("model",), collective=True),
}
